# Merxios ERP-Sync image: one image for every process
# (`erp-sync api | worker | scheduler | migrate | start`).
#
#   docker build -t merxios/erp-sync .
#   docker run --rm merxios/erp-sync --help
#
# Stage 1 builds wheels of the project and its dependencies with compilers
# at hand and installs them into a venv; stage 2 copies only the venv into
# a slim image without compilers.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers for dependencies that ship no wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# What the wheel is built from; migrations ship inside the package
# (erp_sync/migrations), so `erp-sync migrate` needs nothing else.
COPY pyproject.toml README.md ./
COPY src ./src

# Wheels first (project + runtime dependencies), then an offline install of
# exactly those wheels, so nothing is compiled or fetched at install time.
RUN pip install --upgrade pip wheel \
    && pip wheel --wheel-dir /wheels . \
    && pip install --no-index --find-links /wheels /wheels/*.whl \
    && pip check


FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Dedicated unprivileged user; fixed ids so host secret files can be
# granted to it (chgrp 10001, chmod 0640; see deploy/README.md).
RUN groupadd --system --gid 10001 merxios \
    && useradd --system --uid 10001 --gid merxios --no-create-home \
        --home-dir /app --shell /usr/sbin/nologin merxios

COPY --from=builder /opt/venv /opt/venv
# Empty and read-only for the app: no .env is read from here.
WORKDIR /app

# merxios:merxios, numeric so runtimes can verify it is not root.
USER 10001:10001

EXPOSE 3000

# No curl in the image: the stdlib answers. urlopen raises on connection
# errors and on non-2xx statuses, so any failure exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://localhost:%s/health' % os.environ.get('PORT', '3000'), timeout=4)"]

ENTRYPOINT ["erp-sync"]
CMD ["api"]
