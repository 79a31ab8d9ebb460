#!/usr/bin/env bash
# Prepare the cgroup v2 guest of tests/cgroupv2 (guest.py boots it): QEMU, and Debian's current kernel
# unpacked under /var/cache/expbuild/guest/kernel -- never installed into this machine's /boot.
#
#   bash .ci/setup-guest.sh
#
# Idempotent: a rerun with the kernel already unpacked touches nothing (no apt-get update either).
# Environment: EXPBUILD_GUEST_CACHE (default /var/cache/expbuild/guest).
set -euo pipefail

CACHE=${EXPBUILD_GUEST_CACHE:-/var/cache/expbuild/guest}
log() { printf '[setup-guest] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
export DEBIAN_FRONTEND=noninteractive
updated=0
apt_update() {
    [ $updated = 1 ] || apt-get update -qq
    updated=1
}

missing=()
for pkg in qemu-system-x86 busybox-static; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_update
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -s "$CACHE/kernel/release" ]; then
    log "kernel $(cat "$CACHE/kernel/release") already unpacked in $CACHE/kernel"
    exit 0
fi

apt_update
# linux-image-amd64 is a metapackage: the real package (linux-image-<release>-amd64) is its dependency.
package=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
[ -n "$package" ] || die "cannot find the kernel package behind linux-image-amd64"
release=${package#linux-image-}
log "fetching $package (downloaded and unpacked, not installed)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$package" 2>&1 | grep -v "couldn't be accessed by user '_apt'" >&2 || true)
deb=$(ls "$work"/*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || die "apt-get download $package fetched nothing"
mkdir -p "$CACHE"
rm -rf "$CACHE/kernel.part"
dpkg-deb -x "$deb" "$CACHE/kernel.part"
[ -f "$CACHE/kernel.part/boot/vmlinuz-$release" ] || die "$package has no boot/vmlinuz-$release"
# The package ships no modules.dep (its postinst runs depmod); busybox's depmod writes one here.
/bin/busybox depmod -b "$CACHE/kernel.part" "$release"
echo "$release" >"$CACHE/kernel.part/release"
rm -rf "$CACHE/kernel"
mv "$CACHE/kernel.part" "$CACHE/kernel"
log "kernel $release unpacked in $CACHE/kernel"
