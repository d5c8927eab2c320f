#!/bin/sh
# A Debian bookworm base image made from Debian packages alone (no container registry):
# debootstrap a minimal system with Python into a folder, then `podman import` it.
#
#   deploy/container/base.sh [TAG]          default TAG: localhost/nrm-base:bookworm
#   PODMAN="podman --storage-driver vfs" MIRROR=http://deb.debian.org/debian  (defaults: podman, that mirror)
#
# Needs root, debootstrap and podman. Then build with --build-arg BASE=TAG (Containerfile).
set -eu
tag=${1:-localhost/nrm-base:bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | ${PODMAN:-podman} import --change 'CMD ["/bin/bash"]' - "$tag"
