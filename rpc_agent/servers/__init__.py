"""Glue for the servers the agent runs under: the runner (uvicorn), gunicorn's hooks and
worker, waitress, and the hardened HTTP protocol."""
