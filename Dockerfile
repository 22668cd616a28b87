# nightcrew itself: `docker build -t nightcrew .`, then see docker-compose.yml.
# BASE is any Debian bookworm image with Python 3.11: the registry's python slim image by
# default; without a registry, deploy/build-base.sh imports one made by debootstrap
# (`docker build --build-arg BASE=nightcrew-base:bookworm .`).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# uv from PyPI (no registry needed); certificates from the base, so a build behind a
# TLS-inspecting proxy works when the base trusts that proxy.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir -q uv==0.13.9
WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv sync --locked --no-dev --no-install-project --no-cache --python python3
COPY manifest.yml ./
COPY sandbox sandbox
COPY storage storage
COPY executor executor
COPY bot bot
# Editable: the sandbox's Dockerfile and manifest.yml stay beside the code that reads them.
RUN /opt/uv/bin/uv sync --locked --no-dev --no-cache --python python3

FROM ${BASE}
# The executor runs git on the host side of the sandbox (clones, bundles, merges).
RUN if ! command -v git >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends git \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin nightcrew \
    && mkdir -p /var/lib/nightcrew && chown nightcrew:nightcrew /var/lib/nightcrew
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NIGHTCREW_HOME=/var/lib/nightcrew \
    NIGHTCREW_ADMIN_PORT=9090 \
    NIGHTCREW_ADMIN_HOST=0.0.0.0 \
    NIGHTCREW_HOST=0.0.0.0 \
    NIGHTCREW_WEB_HOST=0.0.0.0
USER nightcrew
WORKDIR /var/lib/nightcrew
# 9090: /healthz and /metrics; 3000: Slack's HTTP mode; 8780: the task pages.
EXPOSE 9090 3000 8780
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('NIGHTCREW_ADMIN_PORT', '9090'), timeout=4)"]
ENTRYPOINT ["nightcrew"]
CMD ["up"]
