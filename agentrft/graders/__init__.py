"""agentrft.graders"""
