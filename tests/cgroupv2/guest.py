"""Boot a cgroup-v2-only Linux guest under QEMU and run a pytest selection inside it.

    python3 -m tests.cgroupv2.guest [--docker] [pytest arguments...]

This machine runs cgroup v1 (hybrid), so the v2 code of the executors would
never run here. The guest is Debian's own kernel (unpacked by
``.ci/setup-guest.sh`` under /var/cache/expbuild/guest, never installed into
/boot) booted under software emulation (``-accel tcg``: a guest kernel hangs
under this machine's /dev/kvm) with ``cgroup_no_v1=all``, so only the unified
hierarchy exists. There is no guest image to build: the guest's root is this
machine's own ``/`` shared read-only over virtio-9p with a tmpfs overlay on
top, so the same Python, site-packages, busybox, dockerd and project tree are
there. A small initramfs made per run (busybox, ``guest_init.sh`` and the few
modules needed to mount that root) switches into it and runs
``guest_stage2.sh`` from the project tree, which mounts cgroup2, optionally
starts dockerd, and runs pytest. Its output, exit code and timings come back
through a second, writable 9p share (a host temporary directory).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("EXPBUILD_GUEST_CACHE", "/var/cache/expbuild/guest"))
SETUP = ".ci/setup-guest.sh"
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
# What the initramfs needs to mount the shared root; their dependencies come from modules.dep.
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
KERNEL_ARGS = "console=ttyS0 cgroup_no_v1=all panic=-1 quiet loglevel=4"
RESULTS_IN_GUEST = "/run/expbuild-guest"


class GuestUnavailable(Exception):
    """Something outside the code is missing to boot the guest (QEMU, the unpacked kernel, busybox)."""


@dataclass(frozen=True)
class Kernel:
    release: str
    vmlinuz: Path
    modules: Path        # lib/modules/<release>, with a modules.dep


@dataclass
class GuestRun:
    exit_code: int | None        # pytest's, or None when the guest never reported one
    output: str                  # pytest's output
    console: str                 # the serial console (kernel messages, init, dockerd's start)
    wall_seconds: float          # QEMU's start to its exit, on this machine
    timings: dict[str, float]    # guest uptime at each stage (see guest_stage2.sh)
    junit: str = ""              # pytest's --junitxml report, when the run got that far

    def report(self) -> str:
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        lines = [line for line in self.output.splitlines() if line.strip()]
        summary = lines[-1].strip("= ") if lines else "no pytest output"
        return (f"guest pytest exit code {self.exit_code} ({summary}); wall {self.wall_seconds:.1f}s; "
                f"guest uptime at {stages}\n"
                f"--- pytest output (guest) ---\n{self.output[-20000:]}\n"
                f"--- serial console (last lines) ---\n{self.console[-4000:]}")


def find_kernel(cache: Path = CACHE) -> Kernel:
    release_file = cache / "kernel" / "release"
    if not release_file.is_file():
        raise GuestUnavailable(f"no unpacked guest kernel under {cache}/kernel (run `bash {SETUP}`)")
    release = release_file.read_text().strip()
    kernel = Kernel(release, cache / "kernel" / "boot" / f"vmlinuz-{release}",
                    cache / "kernel" / "lib" / "modules" / release)
    if not kernel.vmlinuz.is_file() or not (kernel.modules / "modules.dep").is_file():
        raise GuestUnavailable(f"the guest kernel {release} under {cache}/kernel is incomplete (run `bash {SETUP}`)")
    return kernel


def check_ready(cache: Path = CACHE) -> Kernel:
    """The kernel to boot, or GuestUnavailable naming what is missing."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise GuestUnavailable(f"the guest is an x86_64 Linux kernel; this is {sys.platform}/{os.uname().machine}")
    if shutil.which(QEMU) is None:
        raise GuestUnavailable(f"{QEMU} is not installed (Debian package qemu-system-x86; run `bash {SETUP}`)")
    if not os.access(BUSYBOX, os.X_OK):
        raise GuestUnavailable(f"{BUSYBOX} is missing (Debian package busybox-static)")
    if os.geteuid() != 0:
        raise GuestUnavailable("sharing / with the guest and mounting in it needs root")
    return find_kernel(cache)


def load_order(modules: Path, wanted: tuple[str, ...] = ROOT_MODULES) -> list[Path]:
    """The module files for ``wanted`` and everything they depend on, dependencies first (from modules.dep)."""
    deps: dict[str, list[str]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        if ":" in line:
            path, rest = line.split(":", 1)
            deps[path] = rest.split()
    by_name = {Path(path).name.removesuffix(".ko"): path for path in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dependency in deps[path]:
            visit(dependency)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise GuestUnavailable(f"the guest kernel has no module {name}.ko (is {modules} a full kernel?)")
        visit(by_name[name])
    return [modules / path for path in order]


def build_initramfs(kernel: Kernel, into: Path) -> Path:
    """An uncompressed newc cpio: busybox, guest_init.sh as /init, the root's modules and their load order."""
    stage = into / "initramfs"
    for directory in ("bin", "modules", "proc", "sys", "dev", "lower", "upper", "newroot", "results"):
        (stage / directory).mkdir(parents=True)
    shutil.copy2(BUSYBOX, stage / "bin" / "busybox")
    shutil.copy2(HERE / "guest_init.sh", stage / "init")
    (stage / "init").chmod(0o755)
    names = []
    for module in load_order(kernel.modules):
        shutil.copy2(module, stage / "modules" / module.name)
        names.append(module.name)
    (stage / "modules" / "order").write_text("\n".join(names) + "\n")
    image = into / "initramfs.cpio"
    files = subprocess.run(["find", "."], cwd=stage, capture_output=True, check=True).stdout
    with open(image, "wb") as out:
        subprocess.run([BUSYBOX, "cpio", "-o", "-H", "newc"], cwd=stage, input=files, stdout=out,
                       stderr=subprocess.DEVNULL, check=True)
    return image


# Fresh file systems in the guest: a project below one of them would be hidden there.
HIDDEN_IN_GUEST = ("/run", "/dev", "/proc", "/sys", "/var/lib/docker", "/var/lib/containerd")


def write_job(results: Path, kernel: Kernel, pytest_args: list[str], *, project: Path, docker: bool) -> None:
    hidden = [d for d in HIDDEN_IN_GUEST if project.resolve().is_relative_to(d)]
    if hidden:
        raise ValueError(f"project {project}: the guest mounts a fresh {hidden[0]}, so it cannot see a project there")
    job = results / "job"
    job.mkdir()
    env = {"PROJECT": str(project), "PYTHON": os.path.realpath(sys.executable), "DOCKER": "1" if docker else "0",
           "KERNEL_MODULES": str(kernel.modules.parent), "RESULTS": RESULTS_IN_GUEST}
    for name, value in env.items():
        if not re.fullmatch(r"[A-Za-z0-9_./+-]*", value):
            raise ValueError(f"{name}={value!r}: the guest reads the job with a plain shell; use a simpler path")
    (job / "env").write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    (job / "args").write_bytes(b"".join(arg.encode() + b"\0" for arg in pytest_args))


def qemu_command(kernel: Kernel, initramfs: Path, results: Path, *, memory_mib: int, cpus: int) -> list[str]:
    return [QEMU, "-accel", "tcg,thread=multi", "-machine", "q35", "-cpu", "max", "-smp", str(cpus),
            "-m", str(memory_mib), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{results / 'console.log'}",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs), "-append", KERNEL_ARGS,
            # multidevs=remap: / spans several host file systems; keeps their inode numbers apart
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={results},mount_tag=results,security_model=none"]


def run(pytest_args: list[str], *, project: Path = ROOT, docker: bool = False, timeout: float = 900,
        memory_mib: int = 3072, cpus: int = 2, cache: Path = CACHE) -> GuestRun:
    """Boot the guest, run ``pytest <pytest_args>`` in ``project`` inside it, and return what it reported."""
    kernel = check_ready(cache)
    with tempfile.TemporaryDirectory(prefix="expbuild-guest-") as scratch:
        scratch_path = Path(scratch)
        results = scratch_path / "results"
        results.mkdir()
        initramfs = build_initramfs(kernel, scratch_path)
        write_job(results, kernel, pytest_args, project=project, docker=docker)
        command = qemu_command(kernel, initramfs, results, memory_mib=memory_mib, cpus=cpus)
        started = time.monotonic()
        qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            qemu_output, _ = qemu.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu_output, _ = qemu.communicate()
            qemu_output += f"\n[the guest was killed after {timeout:g}s]".encode()
        wall = time.monotonic() - started
        console = _text(results / "console.log") + qemu_output.decode(errors="replace")
        code = _text(results / "rc").strip()
        return GuestRun(exit_code=int(code) if code.isdigit() else None, output=_text(results / "pytest.log"),
                        console=console, wall_seconds=wall, timings=_timings(results / "timings"),
                        junit=_text(results / "junit.xml"))


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _timings(path: Path) -> dict[str, float]:
    """``<stage> <guest uptime seconds>`` lines written by guest_stage2.sh."""
    found = {}
    for line in _text(path).splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                found[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return found


def main(argv: list[str]) -> int:
    docker = "--docker" in argv
    args = [a for a in argv if a != "--docker"]
    try:
        result = run(args or ["tests/cgroupv2"], docker=docker)
    except GuestUnavailable as exc:
        print(f"cannot boot the cgroup v2 guest: {exc}", file=sys.stderr)
        return 2
    print(result.output, end="")
    print(f"[guest] wall {result.wall_seconds:.1f}s; uptime at " +
          ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()), file=sys.stderr)
    if result.exit_code is None:
        print(result.console[-4000:], file=sys.stderr)
        return 1
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
