"""agentrft.data"""
