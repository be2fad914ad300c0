"""Talking to one agent: its endpoint (URL, secret, scheme, timeout), capped HTTP, and the
signed health probe."""
