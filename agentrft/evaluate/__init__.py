"""agentrft.evaluate"""
