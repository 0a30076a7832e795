"""agentrft.agent"""
