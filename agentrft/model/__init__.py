"""agentrft.model"""
