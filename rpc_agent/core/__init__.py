"""The framework-neutral agent: its state, routes, held requests, schema cache and SSE
streams. Nothing here imports a web framework or a server."""
