"""What the agent and the datasource share, and nothing else: the wire protocol, request
signing, the secret settings, the hooks mechanism, and rate-limited log lines."""
