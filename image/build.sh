#!/usr/bin/env bash
# Build the operator/agent image without an image registry, as root on Debian 12.
#
#   image/build.sh [--engine docker|podman] [--base IMAGE]
#   image/build.sh --inputs-hash     print the hash of what goes into the image, build nothing
#   image/build.sh --lock            regenerate image/requirements.lock from a clean venv
#
# 1. the base: localhost/expbuild-python-base:bookworm, a debootstrapped bookworm with python3 (3.11) and venv,
#    busybox-static, CA certificates and libseccomp2 (rootfs tarball cached in /var/cache/expbuild;
#    skipped when the image exists). --base IMAGE uses another bookworm image instead (then the
#    Containerfile's base stage apt-installs what is missing, which needs the network).
# 2. wheels on the host (python3.11, pip's configured indexes): the package and every pin of
#    image/requirements.lock, into a temporary build context.
# 3. the build, with --network none on the local base: pip --no-index installs from the context.
#
# Tags: ghcr.io/expbuild/expbuild-isolation:<version> and localhost/expbuild-isolation:<version>,
# <version> being __version__ of the package. The label expbuild.io/inputs-sha256 holds
# --inputs-hash and expbuild.io/base the base image: .ci/build-image.sh compares both to skip
# builds that would change nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENGINE=docker
BASE=
LOCAL_BASE=localhost/expbuild-python-base:bookworm
BASE_PACKAGES=python3,python3-venv,busybox-static,ca-certificates,libseccomp2
CACHE=${EXPBUILD_CACHE:-/var/cache/expbuild}
PYTHON=${PYTHON:-python3.11}
HASH_LABEL=expbuild.io/inputs-sha256
BASE_LABEL=expbuild.io/base
BUILD_LOG=/var/log/expbuild-build-image.log
WHEELS_LOG=/var/log/expbuild-build-image-wheels.log
CTX=

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

version() {
    sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/operator/expbuild_isolation/__init__.py"
}

inputs_hash() {  # everything that changes the image: the package sources, its metadata, image/ itself
    (
        cd "$ROOT"
        {
            printf '%s\n' pyproject.toml image/Containerfile image/build.sh image/requirements.lock image/runtime_root.py
            find operator/expbuild_isolation -type f ! -path '*/__pycache__/*' ! -name '*.pyc'
        } | LC_ALL=C sort | xargs sha256sum
    ) | sha256sum | cut -d' ' -f1
}

regenerate_lock() {
    local venv
    venv=$(mktemp -d)
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q "$ROOT"
    {
        sed -n '1,/^# (pip --no-index/p' "$ROOT/image/requirements.lock"
        "$venv/bin/pip" freeze --exclude-editable | grep -v '^expbuild-isolation'
    } >"$ROOT/image/requirements.lock.new"
    mv "$ROOT/image/requirements.lock.new" "$ROOT/image/requirements.lock"
    rm -rf "$venv"
    log "wrote image/requirements.lock"
}

check_engine() {
    command -v "$ENGINE" >/dev/null || die "$ENGINE is not installed: run .ci/setup-containers.sh"
    "$ENGINE" info >/dev/null 2>&1 \
        || die "$ENGINE does not answer (is the daemon running?): run .ci/setup-containers.sh"
}

local_base() {  # debootstrap once, cache the rootfs tarball, import it when the engine lacks the image
    if "$ENGINE" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        log "$LOCAL_BASE exists"
        return
    fi
    local tar=$CACHE/debian-bookworm-python.tar root
    if [ ! -s "$tar" ]; then
        [ "$(id -u)" = 0 ] || die "debootstrap needs root"
        command -v debootstrap >/dev/null || die "debootstrap is not installed: run .ci/setup-containers.sh"
        log "debootstrap bookworm minbase + $BASE_PACKAGES (cached in $tar)"
        root=$(mktemp -d)
        mkdir -p "$CACHE"
        debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$root" http://deb.debian.org/debian \
            >/var/log/expbuild-debootstrap-python.log 2>&1 \
            || die "debootstrap failed; see /var/log/expbuild-debootstrap-python.log"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
            "$root"/usr/share/man/* "$root"/usr/share/info/*
        tar --numeric-owner -C "$root" -cf "$tar.part" . && mv "$tar.part" "$tar"
        rm -rf "$root"
    fi
    log "$ENGINE: importing $LOCAL_BASE"
    "$ENGINE" import $([ "$ENGINE" = podman ] && echo --quiet) --change 'CMD ["/bin/sh"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tar" "$LOCAL_BASE" >/dev/null
}

wheels() {  # wheels <dir>: the package and every pin, built or fetched on the host
    local out=$1 src
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$PYTHON is not Python 3.11: the wheels must match the image's python3.11 (set PYTHON=)"
    src=$(mktemp -d)
    # a copy, so that building leaves no build/ or egg-info behind in the checkout
    cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$src/"
    mkdir "$src/operator"
    tar -C "$ROOT/operator" --exclude=__pycache__ --exclude='*.pyc' -cf - expbuild_isolation | tar -C "$src/operator" -xf -
    log "wheels: expbuild-isolation and $(grep -c '==' "$ROOT/image/requirements.lock") pinned dependencies"
    { "$PYTHON" -m pip wheel -q --no-deps "$src" -w "$out" \
        && "$PYTHON" -m pip wheel -q --no-deps -r "$ROOT/image/requirements.lock" -w "$out"; } >"$WHEELS_LOG" 2>&1 \
        || { grep -v 'is ignored: it is neither' "$WHEELS_LOG" | tail -n 30 >&2; die "pip wheel failed; see $WHEELS_LOG"; }
    cp "$ROOT/image/requirements.lock" "$out/"
    rm -rf "$src"
}

build() {
    local version hash network=()
    version=$(version)
    [ -n "$version" ] || die "no __version__ in operator/expbuild_isolation/__init__.py"
    hash=$(inputs_hash)
    check_engine
    if [ -z "$BASE" ]; then
        local_base
        BASE=$LOCAL_BASE
        network=(--network none)  # the local base needs no apt: prove the build is offline
    fi
    CTX=$(mktemp -d)
    trap 'rm -rf "$CTX"' EXIT
    wheels "$CTX/wheels"
    cp "$ROOT/image/Containerfile" "$ROOT/image/runtime_root.py" "$CTX/"
    local previous
    previous=$("$ENGINE" image inspect --format '{{ .Id }}' "localhost/expbuild-isolation:$version" 2>/dev/null || true)
    log "$ENGINE build expbuild-isolation:$version from $BASE"
    # DOCKER_BUILDKIT=0: docker.io 20.10 here has no buildx; the classic builder does multi-stage.
    DOCKER_BUILDKIT=0 "$ENGINE" build "${network[@]}" -f "$CTX/Containerfile" \
        --build-arg BASE="$BASE" --build-arg VERSION="$version" --label "$HASH_LABEL=$hash" --label "$BASE_LABEL=$BASE" \
        -t "ghcr.io/expbuild/expbuild-isolation:$version" -t "localhost/expbuild-isolation:$version" \
        "$CTX" >"$BUILD_LOG" 2>&1 || { tail -n 30 "$BUILD_LOG" >&2; die "$ENGINE build failed; see $BUILD_LOG"; }
    # the install stage and the image this one replaces (unless a container still uses it)
    "$ENGINE" image prune -f --filter label=expbuild.io/build-stage=expbuild-isolation-install >/dev/null
    if [ -n "$previous" ] && [ "$previous" != "$("$ENGINE" image inspect --format '{{ .Id }}' "localhost/expbuild-isolation:$version")" ]; then
        "$ENGINE" image rm "$previous" >/dev/null 2>&1 || true
    fi
    log "built ghcr.io/expbuild/expbuild-isolation:$version and localhost/expbuild-isolation:$version ($HASH_LABEL=$hash)"
}

main() {
    while [ $# -gt 0 ]; do
        case $1 in
            --engine) ENGINE=${2:?--engine docker|podman}; shift 2 ;;
            --base) BASE=${2:?--base IMAGE}; shift 2 ;;
            --inputs-hash) inputs_hash; return ;;
            --lock) regenerate_lock; return ;;
            -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; return ;;
            *) die "unknown argument $1 (see --help)" ;;
        esac
    done
    case $ENGINE in docker|podman) ;; *) die "--engine must be docker or podman" ;; esac
    build
    log "done in ${SECONDS}s"
}

main "$@"
