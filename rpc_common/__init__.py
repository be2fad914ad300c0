"""Pieces shared by the agent and the datasource: request signing and secret settings."""
