"""The `forest-rpc` command."""
