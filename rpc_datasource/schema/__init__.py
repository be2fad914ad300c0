"""The agent's schema: fetching it, deciding when to, and what changed."""
