"""The warehouse as a FastAPI app, with the agent as ASGI middleware, served by uvicorn."""

from examples.warehouse_asgi.app import create_app

__all__ = ["create_app"]
