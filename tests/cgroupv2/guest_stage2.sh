#!/bin/bash
# pid 1 of the cgroup v2 guest, in this machine's root under a tmpfs overlay (guest_init.sh switched here).
# Mounts the unified cgroup hierarchy alone (the kernel runs with cgroup_no_v1=all), gives the guest a
# non-loopback address on a dummy interface, optionally starts dockerd, runs the job's pytest arguments in
# the project, and writes pytest's output, exit code and guest uptimes into the results share. Then powers off.
set -u
source /run/expbuild-guest/job/env
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8

stamp() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >>"$RESULTS/timings"; }
say() { echo "guest: $*" >/dev/console; }
off() { sync; /bin/busybox poweroff -f; sleep 60; }
trap off EXIT

stamp init
# /tmp stays the overlay's: the project may live there (a CI clone), and writes land in the guest's RAM anyway
mkdir -p /dev/pts /dev/shm /lib/modules
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || { say "cannot mount cgroup2"; exit 1; }
mount --bind "$KERNEL_MODULES" /lib/modules
hostname expbuild-guest
# Debian's kernel defaults to 3 (no perf_event_open without CAP_PERFMON); the escape suite's unfiltered
# control probe needs the upstream default, as on the CI machine.
echo 2 >/proc/sys/kernel/perf_event_paranoid
ip link set lo up
# host_address() in the escape suite wants an address that is not loopback; nothing leaves the guest.
/bin/busybox modprobe dummy && ip link add eth0 type dummy && ip addr add 10.0.2.15/24 dev eth0 \
    && ip link set eth0 up && ip route add default dev eth0 || say "no dummy interface"
say "cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"

start_docker() {
    local deadline=$((SECONDS + 180))
    mkdir -p /var/lib/docker /var/lib/containerd
    mount -t tmpfs docker /var/lib/docker && mount -t tmpfs containerd /var/lib/containerd
    # no bridge and no iptables: the tests use network mode none; overlay2 works on the tmpfs
    (cd / && exec dockerd --bridge=none --iptables=false --ip6tables=false --storage-driver=overlay2 \
        >/tmp/dockerd.log 2>&1 </dev/null) &
    until docker info >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            say "dockerd did not answer in 180 s"; tail -20 /tmp/dockerd.log >/dev/console; return 1
        fi
        sleep 1
    done
    # the busybox test image from the same rootfs tarball as .ci/setup-containers.sh imports on the host
    docker import --change 'CMD ["/bin/sh"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        /var/cache/expbuild/expbuild-busybox.tar localhost/expbuild-busybox:latest >/dev/null \
        || { say "cannot import the busybox image"; return 1; }
}

# a backend the job needs fails its tests when unavailable, instead of skipping them
export EXPBUILD_REQUIRE_BACKENDS=namespace
if [ "$DOCKER" = 1 ]; then
    EXPBUILD_REQUIRE_BACKENDS=namespace,docker
    start_docker && stamp docker
fi

cd "$PROJECT"
mapfile -d '' args <"$RESULTS/job/args"
stamp pytest
# Unbuffered, and no test longer than 300 s (the whole suite takes ~3 min): should the guest hang again (once,
# in a CI run, before the first test's OOM message, for the guest's whole 1,200 s), its log says where, with the
# stacks pytest-timeout prints, instead of being lost with the killed guest.
EXPBUILD_IN_CGROUP_V2_GUEST=1 PYTHONPATH="$PROJECT/operator" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    "$PYTHON" -m pytest -p no:cacheprovider --timeout=300 --junitxml="$RESULTS/junit.xml" "${args[@]}" \
    >"$RESULTS/pytest.log" 2>&1
echo $? >"$RESULTS/rc"
stamp done
