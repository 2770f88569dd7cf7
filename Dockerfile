# heartbeat-bridge: gunicorn via `heartbeat-bridge serve`, SQLite on a volume by default.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/heartbeat-bridge
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY agent ./agent
RUN pip install ".[postgres]" \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin heartbeat \
 && mkdir -p /var/lib/heartbeat-bridge \
 && chown heartbeat:heartbeat /var/lib/heartbeat-bridge

USER 10001:10001
ENV HEARTBEAT_BIND=0.0.0.0:8000 \
    HEARTBEAT_DATABASE_URL=sqlite:////var/lib/heartbeat-bridge/heartbeat.db
VOLUME ["/var/lib/heartbeat-bridge"]
EXPOSE 8000

# The bridge's own CLI asks /healthz on HEARTBEAT_BIND: the image needs no HTTP client.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["heartbeat-bridge", "healthcheck"]

ENTRYPOINT ["heartbeat-bridge"]
CMD ["serve"]
