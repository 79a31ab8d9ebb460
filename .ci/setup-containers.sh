#!/usr/bin/env bash
# Prepare Docker, Podman and gVisor for the executor tests on a fresh Debian 12, as root.
#
# Idempotent: reruns skip what is already installed, running or built. No image
# registry is needed: the test images are assembled from Debian packages. Debian's
# docker-registry is installed but not started here: tests/executors/test_signed_images.py
# starts its own on a loopback port (Docker records a manifest digest only for a pushed image).
#
#   bash .ci/setup-containers.sh
#
# Environment (all optional):
#   EXPBUILD_DEBIAN_IMAGE=0   skip building localhost/expbuild-debian:bookworm with debootstrap
#                             (~30 s cold here; the rootfs tarball is cached under /var/cache/expbuild)
#   EXPBUILD_SETUP_TIMEOUT=60 seconds to wait for each daemon to answer
set -euo pipefail

BUSYBOX_IMAGE=localhost/expbuild-busybox:latest
DEBIAN_IMAGE=localhost/expbuild-debian:bookworm
CACHE=/var/cache/expbuild
PODMAN_SOCKET=/run/podman/podman.sock
TIMEOUT=${EXPBUILD_SETUP_TIMEOUT:-60}

log() { printf '[setup-containers] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

wait_for() {  # wait_for <what> <command...>: retry until the command succeeds or TIMEOUT passes
    local what=$1; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.5
    done
    log "$what is up"
}

install_packages() {
    local missing=()
    for pkg in docker.io podman runsc busybox-static debootstrap docker-registry; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "packages already installed"
        return
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # runsc may be missing from a mirror; the rest may not.
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        local without_runsc=("${missing[@]/runsc}")
        apt-get install -y -qq --no-install-recommends ${without_runsc[*]}
        log "runsc could not be installed: the gVisor (VM level) tests will skip"
    fi
}

# write_if_changed <path> <content>: returns 0 when the file changed
write_if_changed() {
    local path=$1 content=$2
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
        return 1
    fi
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$content" >"$path"
    log "wrote $path"
}

configure_docker() {
    local runtimes='{}'
    if command -v runsc >/dev/null; then
        runtimes="{\"runsc\": {\"path\": \"$(command -v runsc)\", \"runtimeArgs\": [\"--platform=ptrace\", \"--network=none\"]}}"
    fi
    local changed=0
    write_if_changed /etc/docker/daemon.json "{\"runtimes\": $runtimes}" && changed=1
    if docker info >/dev/null 2>&1; then
        if [ $changed = 1 ] && pid=$(pidof dockerd); then
            kill -HUP "$pid"  # dockerd reloads runtimes on SIGHUP
            log "dockerd reloaded its configuration"
        fi
        log "dockerd already running"
        return
    fi
    pidof containerd >/dev/null || true  # dockerd starts its own containerd when none runs
    log "starting dockerd"
    # from /: conmon and friends write files (e.g. "oom") into their working directory
    (cd / && exec setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null) &
    wait_for "dockerd" docker info || die "dockerd did not answer within ${TIMEOUT}s; see /var/log/dockerd.log"
}

configure_podman() {
    # crun fails on cgroup v1/hybrid hosts; the default nofile/nproc ulimits need CAP_SYS_RESOURCE;
    # conmon outside the task's cgroup keeps its CPU and memory out of the task's stats.
    local conf='# written by expbuild-isolation .ci/setup-containers.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
cgroups = "no-conmon"

[engine]
runtime = "runc"'
    local pidfile=/run/podman/expbuild-service.pid
    if write_if_changed /etc/containers/containers.conf "$conf" && [ -s "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true  # our service read the old file: restart it
        sleep 0.5
    fi
    if curl -fsS --max-time 2 --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null 2>&1; then
        log "podman API service already running"
        return
    fi
    log "starting podman system service on $PODMAN_SOCKET"
    mkdir -p "$(dirname "$PODMAN_SOCKET")"
    rm -f "$PODMAN_SOCKET"
    (cd / && exec setsid nohup podman system service --time=0 "unix://$PODMAN_SOCKET" >/var/log/podman-service.log 2>&1 </dev/null) &
    echo $! >"$pidfile"
    wait_for "podman API" curl -fsS --max-time 2 --unix-socket "$PODMAN_SOCKET" http://d/_ping \
        || die "podman service did not answer within ${TIMEOUT}s; see /var/log/podman-service.log"
}

busybox_rootfs_tar() {  # busybox_rootfs_tar <out.tar>: FROM scratch + busybox + applet links + nobody
    local out=$1 root
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,etc,tmp,workspace,proc,sys,dev,root}
    install -m 0755 /bin/busybox "$root/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    mkdir -p "$root/usr"
    ln -s ../bin "$root/usr/bin"
    ln -s bin "$root/sbin"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    chmod 1777 "$root/tmp"
    chmod 0777 "$root/workspace"
    # Fixed owner and mtime so that the same busybox always gives the same tarball (and digest).
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2024-01-01 00:00Z' \
        -C "$root" -cf "$out" .
    rm -rf "$root"
}

image_label() {  # image_label <engine> <image>: our content label, empty when the image is missing
    "$1" image inspect --format '{{ index .Config.Labels "expbuild.io/rootfs-sha256" }}' "$2" 2>/dev/null || true
}

import_image() {  # import_image <engine> <tar> <image> <sha>
    local engine=$1 tar=$2 image=$3 sha=$4
    if [ "$(image_label "$engine" "$image")" = "$sha" ]; then
        log "$engine: $image is current"
        return
    fi
    log "$engine: importing $image"
    "$engine" import $([ "$engine" = podman ] && echo --quiet) --change 'CMD ["/bin/sh"]' --change "LABEL expbuild.io/rootfs-sha256=$sha" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tar" "$image" >/dev/null
}

build_busybox_image() {
    mkdir -p "$CACHE"
    local tar=$CACHE/expbuild-busybox.tar sha
    busybox_rootfs_tar "$tar"
    sha=$(sha256sum "$tar" | cut -d' ' -f1)
    import_image docker "$tar" "$BUSYBOX_IMAGE" "$sha"
    import_image podman "$tar" "$BUSYBOX_IMAGE" "$sha"
}

build_debian_image() {
    local tar=$CACHE/debian-bookworm-minbase.tar sha root
    if [ ! -s "$tar" ]; then
        log "debootstrap bookworm minbase (cached in $tar)"
        root=$(mktemp -d)
        debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/var/log/expbuild-debootstrap.log 2>&1 \
            || die "debootstrap failed; see /var/log/expbuild-debootstrap.log"
        mkdir -p "$root/workspace" && chmod 0777 "$root/workspace"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar --numeric-owner -C "$root" -cf "$tar.part" . && mv "$tar.part" "$tar"
        rm -rf "$root"
    fi
    sha=$(sha256sum "$tar" | cut -d' ' -f1)
    import_image docker "$tar" "$DEBIAN_IMAGE" "$sha"
    import_image podman "$tar" "$DEBIAN_IMAGE" "$sha"
}

main() {
    install_packages
    configure_docker
    configure_podman
    build_busybox_image
    if [ "${EXPBUILD_DEBIAN_IMAGE:-1}" = 1 ]; then
        build_debian_image
    fi
    log "done in ${SECONDS}s"
}

main "$@"
