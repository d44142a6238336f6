# One container per tenant:  docker run -e TENANT=acme -e ENGINE_URL=… -e ENGINE_TOKEN=… image
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WORKER_HTTP=0.0.0.0:8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY connectors ./connectors
RUN pip install '.[all]'

COPY templates ./templates
COPY config ./config
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin worker \
    && chown -R worker /app
USER worker

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

# exec: the worker is PID 1's child-less self, so SIGTERM reaches it and it drains.
CMD ["sh", "-c", "exec worker run --tenant \"$TENANT\""]
