#!/usr/bin/env bash
# Prepare the REAPI worker's integration test and benchmark on a fresh Debian 12, as root.
#
# Idempotent: reruns skip what is already installed. Installs
#   - Debian's postgresql (binaries only: the tests initdb a private cluster on 127.0.0.1 in a
#     temporary directory; the system-wide cluster is not used) and bazel-bootstrap (Bazel 4.2.3);
#   - BuildGrid 0.4.4 with its full dependencies (SQLAlchemy, alembic, boto3, psycopg2-binary, ...)
#     in its own venv, /opt/buildgrid, so its pins never touch our environment; `bgd` runs from there;
#   - in our environment only what the worker imports: grpcio, protobuf and BuildGrid's generated
#     REAPI / Remote Workers API modules (`buildgrid` installed with --no-deps; the worker reads
#     them through expbuild_isolation/worker/reapi_protos.py and never imports the server).
#
#   bash .ci/setup-reapi.sh
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

BUILDGRID_VERSION=0.4.4
VENV=/opt/buildgrid
PYTHON=${PYTHON:-python3}

log() { printf '[setup-reapi] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "ERROR: must run as root"; exit 1; }

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v bazel >/dev/null 2>&1 || need+=(bazel-bootstrap)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian starts a system cluster on install; the tests never use it (they run their own on a free port)

if ! "$VENV/bin/bgd" --help >/dev/null 2>&1; then
    log "BuildGrid $BUILDGRID_VERSION into $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q "buildgrid==$BUILDGRID_VERSION" psycopg2-binary
fi

if ! "$PYTHON" -c 'import expbuild_isolation.worker.reapi_protos' >/dev/null 2>&1; then
    log "REAPI protos for the worker (grpcio, protobuf, buildgrid --no-deps)"
    "$PYTHON" -m pip install -q "grpcio>=1.73" "protobuf>=6.31,<8"
    "$PYTHON" -m pip install -q --no-deps "buildgrid==$BUILDGRID_VERSION"
fi

"$PYTHON" -c 'import expbuild_isolation.worker.reapi_protos' \
    || { log "ERROR: the worker cannot import its REAPI protos"; exit 1; }
log "ready: $VENV/bin/bgd, bazel-bootstrap $(dpkg-query -W -f='${Version}' bazel-bootstrap 2>/dev/null || echo '?'), \
$(ls -d /usr/lib/postgresql/*/bin | head -1)"
