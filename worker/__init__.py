"""The worker: change listeners (``python -m worker``) and the Celery app (``worker.app``)."""
