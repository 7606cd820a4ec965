# syntax=docker/dockerfile:1
# satapi: build a virtual environment with the package and its dependencies (from the package
# registry only), then copy it into a slim runtime image that runs as an unprivileged user.

FROM python:3.12-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/satapi
ENV PATH=/opt/satapi/bin:$PATH

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
# A regular (not editable) install: the wheel is built here and only /opt/satapi is kept.
RUN pip install --no-cache-dir . \
    && satapi --version


FROM python:3.12-slim-bookworm

ENV PATH=/opt/satapi/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SATAPI_DATA_DIR=/data

RUN groupadd --system --gid 10001 satapi \
    && useradd --system --no-log-init --uid 10001 --gid satapi --home-dir /nonexistent \
        --shell /usr/sbin/nologin satapi \
    && mkdir /data \
    && chown satapi:satapi /data

COPY --from=builder /opt/satapi /opt/satapi

USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8000

# slim has no curl: ask /healthz with the interpreter the service runs on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["satapi", "serve", "--host", "0.0.0.0", "--port", "8000"]
