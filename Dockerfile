FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared_cache ./shared_cache
COPY worker ./worker
COPY tasks ./tasks
RUN pip install --no-cache-dir '.[worker]'
USER nobody
CMD ["python", "-m", "worker"]
