# syntax=docker/dockerfile:1
# The image every tunelab service starts from: Python 3.11, a virtual environment with the
# suite's dependencies (pyproject.toml's, at constraints.txt's versions) and the user it runs as.
#
# `make images` builds it (scripts/images.py) from a context holding only a wheelhouse that the
# host downloaded: wheels/*.whl and wheels/requirements.txt. The build itself needs no network,
# no registry credentials and no CA certificate, and nothing of the host ends up in the image.
#
# BASE: the official image, pinned by digest, where a registry is reachable; `make images`
# without one passes a Debian bookworm made locally by debootstrap (deploy/images/base.sh).
ARG BASE=docker.io/library/python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${BASE} AS venv
COPY wheels /wheels
# pip installs from the wheelhouse only, then leaves the environment: the final image holds no
# installer and no cache.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-cache-dir --no-index --find-links /wheels \
      --requirement /wheels/requirements.txt \
 && /opt/venv/bin/python -m pip uninstall --yes --no-cache-dir pip setuptools

FROM ${BASE}
# One unprivileged user for every service; its home is not writable (nothing needs one).
RUN groupadd --system --gid 10001 tunelab \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin tunelab \
 && mkdir -p /var/lib/tunelab \
 && chown 10001:10001 /var/lib/tunelab
COPY --from=venv /opt/venv /opt/venv
# The root filesystem is read-only when it runs: the sources are compiled into the image, and
# Python is told not to try writing bytecode beside them.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app
WORKDIR /app
USER 10001:10001
# Each image built on this one checks its own process.
HEALTHCHECK NONE
