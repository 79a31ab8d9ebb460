#!/usr/bin/env bash
# Prepare the REAPI worker's integration test and benchmark on a fresh Debian 12, as root.
#
# Idempotent: reruns skip what is already installed. Installs
#   - Debian's postgresql (binaries only: the tests initdb a private cluster on 127.0.0.1 in a
#     temporary directory; the system-wide cluster is not used) and bazel-bootstrap (Bazel 4.2.3);
#   - BuildGrid 0.4.4 with its full dependencies (SQLAlchemy, alembic, boto3, psycopg2-binary, ...)
#     in its own venv, /opt/buildgrid, so its pins never touch our environment; `bgd` runs from there;
#   - in our environment, when the worker cannot import its protocol modules yet, the package's
#     `reapi` extra (grpcio, protobuf, buildgrid-common: BuildGrid's generated REAPI / Remote Workers
#     API modules without the server), as .ci/run's `pip install -e '.[test,reapi]'` does.
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

if ! "$PYTHON" -c 'import expbuild_isolation.worker.reapi.protos' >/dev/null 2>&1; then
    log "the worker's REAPI extra: pip install -e '.[reapi]'"
    (cd "$(dirname "$0")/.." && "$PYTHON" -m pip install -q -e '.[reapi]')
fi

"$PYTHON" -c 'import expbuild_isolation.worker.reapi.protos' \
    || { log "ERROR: the worker cannot import its REAPI protos"; exit 1; }
log "ready: $VENV/bin/bgd, bazel-bootstrap $(dpkg-query -W -f='${Version}' bazel-bootstrap 2>/dev/null || echo '?'), \
$(ls -d /usr/lib/postgresql/*/bin | head -1)"
