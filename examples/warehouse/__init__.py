"""The warehouse data server: a SQLite-backed Flask app with the RPC agent embedded."""

from examples.warehouse.app import create_app, create_asgi_app

__all__ = ["create_app", "create_asgi_app"]
