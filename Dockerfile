# The worker application (listener, Celery workers, operator CLI) from this repository.
FROM python:3.11-slim
WORKDIR /srv/shared-cache
COPY pyproject.toml README.md ./
COPY app ./app
COPY shared_cache ./shared_cache
COPY worker ./worker
COPY tasks ./tasks
# Editable: the application runs from this directory (app/pyproject.toml puts it on sys.path).
RUN pip install --no-cache-dir -e ./app
USER nobody
CMD ["python", "-m", "worker"]
