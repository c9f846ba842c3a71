# syntax=docker/dockerfile:1
# PostgreSQL 15 from Debian, for `make up` and the dev overlay where no registry offers the
# official image. It starts the way the official image does: POSTGRES_PASSWORD sets the
# superuser's password on first start, and the *.sql files in /docker-entrypoint-initdb.d run
# once, so compose.yaml could use either. Not for production: use a managed PostgreSQL.
ARG BASE=docker.io/library/python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
FROM ${BASE}
# The official image's uid and gid, so that volumes made for either fit both.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
 && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/sh postgres \
 && apt-get update \
 && apt-get install --yes --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
 && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d \
 && chown -R 999:999 /var/lib/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY --chmod=0755 postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER 999:999
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
# Its socket and temporary files go to /tmp: the root filesystem may be read-only.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s \
  CMD ["pg_isready", "--host=/tmp", "--username=postgres"]
ENTRYPOINT ["postgres-entrypoint"]
