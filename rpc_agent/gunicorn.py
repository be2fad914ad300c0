"""The gunicorn config module the contract names: `gunicorn -c python:rpc_agent.gunicorn ...`.

The hooks live in `rpc_agent.servers.gunicorn`; gunicorn reads them from this module's names.
"""

from rpc_agent.servers.gunicorn import on_reload, on_starting, post_worker_init

__all__ = ["on_reload", "on_starting", "post_worker_init"]
