"""Runnable examples: the warehouse data server, a master app, and the end-to-end demo."""
