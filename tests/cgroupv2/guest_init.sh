#!/bin/busybox sh
# /init of the cgroup v2 guest's initramfs (see guest.py): mount this machine's / (shared read-only over
# virtio-9p) under a tmpfs overlay, mount the writable results share, and switch into guest_stage2.sh.
# Any failure powers the guest off at once, so the host sees the console instead of waiting for a timeout.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "guest init: $*" >&2
    poweroff -f
    sleep 60
}

mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev || fail "cannot mount /proc, /sys, /dev"
for module in $(cat /modules/order); do
    insmod "/modules/$module" || fail "cannot load $module"
done
# cache=loose: nothing under / changes while the guest runs, and every uncached lookup is a round trip
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || fail "cannot mount the shared root"
mount -t tmpfs -o size=60% upper /upper && mkdir /upper/data /upper/work || fail "cannot mount the overlay's tmpfs"
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work guestroot /newroot || fail "cannot mount the overlay"
mount -t tmpfs -o mode=0755 run /newroot/run && mkdir /newroot/run/expbuild-guest || fail "cannot mount /run"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /newroot/run/expbuild-guest || fail "cannot mount the results share"
. /newroot/run/expbuild-guest/job/env || fail "no job in the results share"
for fs in proc sys dev; do
    mount --move "/$fs" "/newroot/$fs" || fail "cannot move /$fs"
done
exec switch_root /newroot /bin/bash "$PROJECT/tests/cgroupv2/guest_stage2.sh"
