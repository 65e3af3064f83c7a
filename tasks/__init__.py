"""Celery tasks of the worker. They call ``shared_cache``; they do not know where a change came from."""
