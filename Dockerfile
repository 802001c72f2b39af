# flashsale: gateway, reconciler and CLI in one image.
#   docker build -t flashsale .
#   docker run --rm -p 8080:8080 -e FLASHSALE_REDIS_URL=redis://... \
#       -e FLASHSALE_DATABASE_URL=postgresql://... -e FLASHSALE_SECRET=... flashsale
# The same image runs `flashsale migrate` and `flashsale reconcile --metrics-port 9101`
# (see docker-compose.yml).
FROM python:3.11.9-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /src
# A regular (non-editable) install: lua/*.lua and migrations/*.sql travel as package
# data, so the installed copy needs no source tree and /src can go.
RUN pip install /src \
    && rm -rf /src \
    && useradd --system --uid 10001 --create-home --home-dir /home/flashsale \
        --shell /usr/sbin/nologin flashsale

WORKDIR /home/flashsale
USER flashsale

# 8080: gateway HTTP API and /metrics; 9101: reconciler metrics.
EXPOSE 8080 9101

# Gateway liveness; compose overrides it for the reconciler and the one-shot migrate.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

CMD ["flashsale", "serve", "--host", "0.0.0.0", "--port", "8080"]
