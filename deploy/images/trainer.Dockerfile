# syntax=docker/dockerfile:1
# The container provider's default pod image: the runtime (Python 3.11 with numpy, for the tiny
# trainer the pod's script brings) and the tools that script uses (bash, curl, gzip, coreutils).
# It holds no tunelab code and no secret: the deploy service sends the script, the trainer and
# the run's credentials with each container. `make images` builds it (scripts/images.py) on the
# runtime image (deploy/images/runtime.Dockerfile); by hand, from deploy/images, once that
# exists:
#   podman build -f trainer.Dockerfile -t localhost/tunelab/trainer .
# GPU hosts run the TRL image instead (TUNELAB_DEPLOY_RUNPOD_IMAGE), which brings CUDA and torch.
ARG RUNTIME=localhost/tunelab/runtime:latest

FROM ${RUNTIME}
USER 0:0
# Debian's stable release moves curl's version (the base's digest pins the release). /workspace
# is where the provider mounts the pod's one writable, size-limited directory.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && mkdir -p /workspace \
 && chown 10001:10001 /workspace
USER 10001:10001
ENV HOME=/workspace
WORKDIR /workspace
# A pod is a run, not a server: the deploy service watches it through its reports.
HEALTHCHECK NONE
CMD ["bash"]
