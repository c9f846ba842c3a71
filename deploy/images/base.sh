#!/bin/sh
# Make the base image where no registry is reachable: Debian bookworm's minimal variant with
# Python 3.11 and the CA certificates, by debootstrap from a Debian mirror, imported into podman
# as localhost/tunelab/debian-python:bookworm (the runtime's BASE). Needs root and debootstrap.
#   deploy/images/base.sh [IMAGE [MIRROR]]
set -eu
image=${1:-localhost/tunelab/debian-python:bookworm}
mirror=${2:-http://deb.debian.org/debian}
root=$(mktemp -d "${TMPDIR:-/tmp}/tunelab-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror"
# What a container never needs: package lists and caches, documentation, locales but C.UTF-8.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/var/log/* "$root"/tmp/*
tar -C "$root" --numeric-owner -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase bookworm from $mirror" - "$image"
