"""Helper programs the escape suite runs inside a sandbox, built here from their C source.

Each is linked statically (it must run in a busybox image and in a bare namespace sandbox) and says what
the kernel answered by its exit status, which the executor reports from the host side: a probe that is
missing or crashes gives a status no test accepts, so a missing tool can never pass an attack.

- ``syscall_probe GROUP`` makes the system calls of one attack group (see its source).
- ``suid_probe`` is installed setuid root at ``SUID_PROBE`` -- on the host, and in a derived image for
  Docker and Podman -- where a task can execute it with the bit intact.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCES = Path(__file__).parent
CACHE = Path("/var/tmp/expbuild-test-probes")
BASE_IMAGE = "localhost/expbuild-busybox:latest"
SUID_PROBE = "/usr/local/libexec/expbuild-tests/suid-probe"

# syscall_probe's exit statuses
WORKED, ALL_EPERM, ALL_ENOSYS, ALL_OTHER, MIXED = 0, 10, 11, 12, 20
# suid_probe's
RAISED, NOT_RAISED = 42, 43


class ProbeUnavailable(Exception):
    """A probe could not be built or installed; the reason is outside the code under test."""


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def build(name: str) -> Path:
    """The static binary of ``<name>.c``, compiled once per source version."""
    source = SOURCES / f"{name}.c"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ProbeUnavailable("no C compiler (cc) to build the static probes; install gcc and libc6-dev")
    target = CACHE / _digest(source.read_bytes()) / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        done = subprocess.run([compiler, "-static", "-O2", "-Wall", "-o", str(partial), str(source)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ProbeUnavailable(f"cannot build {name} statically: {done.stderr.strip()[-400:]}")
        partial.replace(target)
    return target


def install_suid_probe() -> Path:
    """``suid_probe`` at SUID_PROBE on the host, root-owned, mode 4755 (removed by ``remove_suid_probe``)."""
    path = Path(SUID_PROBE)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    shutil.copyfile(build("suid_probe"), partial)
    os.chown(partial, 0, 0)
    partial.chmod(0o4755)
    partial.replace(path)
    return path


def remove_suid_probe() -> None:
    path = Path(SUID_PROBE)
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass


@functools.cache
def suid_image(engine: str) -> str:
    """An image of ``engine`` (docker or podman): the busybox test image plus suid_probe at SUID_PROBE,
    setuid root, checked to raise nobody to root under a plain ``run`` (no no-new-privileges)."""
    binary = build("suid_probe")
    tag = f"localhost/expbuild-suid-probe:{_digest(binary.read_bytes(), BASE_IMAGE.encode())}"
    if subprocess.run([engine, "image", "inspect", tag], capture_output=True).returncode != 0:
        _build_suid_image(engine, binary, tag)
    control = subprocess.run([engine, "run", "--rm", "--user", "65534", "--network", "none", tag, SUID_PROBE],
                             capture_output=True, text=True)
    if control.returncode != RAISED:
        raise ProbeUnavailable(f"{SUID_PROBE} in {tag} does not raise nobody to root under a plain {engine} run "
                               f"(exit {control.returncode}): {control.stderr.strip()[-400:]}")
    return tag


def _build_suid_image(engine: str, binary: Path, tag: str) -> None:
    """The bit is set by a RUN step: COPY drops it."""
    with tempfile.TemporaryDirectory() as context:
        shutil.copyfile(binary, Path(context, "suid-probe"))
        Path(context, "Containerfile").write_text(
            f"FROM {BASE_IMAGE}\nCOPY suid-probe {SUID_PROBE}\nRUN [\"/bin/chmod\", \"4755\", \"{SUID_PROBE}\"]\n")
        done = subprocess.run([engine, "build", "-q", "-f", f"{context}/Containerfile", "-t", tag, context],
                              capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    if done.returncode != 0:
        raise ProbeUnavailable(f"{engine} cannot build {tag} from {BASE_IMAGE}: {done.stderr.strip()[-400:]}")
