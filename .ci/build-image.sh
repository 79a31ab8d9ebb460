#!/usr/bin/env bash
# CI step: build the operator/agent image (image/build.sh) unless the one present is current.
#
# Idempotent: the image carries the hash of its inputs (pyproject.toml, operator/expbuild_isolation,
# image/) as the label expbuild.io/inputs-sha256 and its base as expbuild.io/base; when they equal
# `image/build.sh --inputs-hash` and the local base, nothing is built (well under a second). Needs the engine running (.ci/setup-containers.sh).
#
#   bash .ci/build-image.sh [--engine docker|podman]
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=docker
if [ "${1:-}" = --engine ]; then
    ENGINE=${2:?--engine docker|podman}
fi

log() { printf '[build-image] %s\n' "$*" >&2; }

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' operator/expbuild_isolation/__init__.py)
image=localhost/expbuild-isolation:$version
want=$(bash image/build.sh --inputs-hash)
base=localhost/expbuild-python-base:bookworm  # image/build.sh's default base
have=$("$ENGINE" image inspect --format \
    '{{ index .Config.Labels "expbuild.io/inputs-sha256" }} {{ index .Config.Labels "expbuild.io/base" }}' \
    "$image" 2>/dev/null || true)
want="$want $base"

if [ "$have" = "$want" ]; then
    log "$ENGINE: $image is current ($want)"
    exit 0
fi
if [ -n "$have" ]; then
    log "$ENGINE: rebuilding $image (inputs changed: $have -> $want)"
else
    log "$ENGINE: building $image (absent or unlabelled)"
fi
bash image/build.sh --engine "$ENGINE"
