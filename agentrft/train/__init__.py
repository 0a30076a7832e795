"""agentrft.train"""
