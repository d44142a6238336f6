# One container per tenant:  docker run -e TENANT=acme -e ENGINE_URL=… -e ENGINE_TOKEN=… image
#
# Two stages: the first builds a virtual environment with every connector extra
# (compilers and pip's leftovers stay there), the second copies only that
# environment onto a clean slim image.
FROM python:3.12-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN python -m venv /opt/worker
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY connectors ./connectors
RUN /opt/worker/bin/pip install '.[all]'


FROM python:3.12-slim

ENV PATH=/opt/worker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WORKER_HTTP=0.0.0.0:8080 \
    WORKER_STATE_DIR=/var/lib/worker

COPY --from=build /opt/worker /opt/worker
WORKDIR /app
COPY templates ./templates
COPY config ./config
# The worker's own files (the audit log's SQLite file when no database holds it)
# go to a volume: the config may be mounted read-only (-v $PWD/config:/app/config:ro).
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin worker \
    && mkdir -p /var/lib/worker \
    && chown worker /var/lib/worker
VOLUME /var/lib/worker
USER worker

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

# exec: the worker is PID 1's child-less self, so SIGTERM reaches it and it drains.
CMD ["sh", "-c", "exec worker run --tenant \"$TENANT\""]
