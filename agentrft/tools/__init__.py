"""agentrft.tools"""
