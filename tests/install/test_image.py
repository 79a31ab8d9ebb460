"""The operator/agent image as built by ``image/build.sh`` (through ``.ci/build-image.sh``).

Everything runs the real image with the docker CLI. Without the image, or with an image built
from other sources than the checkout's, the module skips ("run .ci/build-image.sh"); with
``EXPBUILD_REQUIRE_IMAGE=1`` it fails instead.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from expbuild_isolation import __version__

ROOT = Path(__file__).resolve().parents[2]
IMAGE = f"localhost/expbuild-isolation:{__version__}"
HASH_LABEL = "expbuild.io/inputs-sha256"
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "10001",
            "--network", "none"]


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def run(*args: str, entrypoint: str | None = None, options: tuple[str, ...] = ()) -> str:
    """stdout of ``docker run --rm [options] IMAGE args``; fails on a non-zero exit."""
    prefix = ["--entrypoint", entrypoint] if entrypoint else []
    return docker("run", "--rm", *options, *prefix, IMAGE, *args).stdout


def inputs_hash() -> str:
    return subprocess.run(["bash", str(ROOT / "image" / "build.sh"), "--inputs-hash"], capture_output=True,
                          text=True, check=True).stdout.strip()


def image_labels() -> dict[str, str] | None:
    """The image's labels, None when it is absent or docker is unusable; skips or fails as the module says."""
    if shutil.which("docker") is None:
        return None
    result = docker("image", "inspect", "--format", "{{ json .Config.Labels }}", IMAGE, check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout) or {}


@pytest.fixture(scope="module", autouse=True)
def current_image() -> dict[str, str]:
    return require_current_image()


def require_current_image() -> dict[str, str]:
    """The image's labels when it is built from this checkout; else skip, or fail under EXPBUILD_REQUIRE_IMAGE=1."""
    required = os.environ.get("EXPBUILD_REQUIRE_IMAGE") == "1"
    labels = image_labels()
    if labels is None:
        reason = f"image {IMAGE} is absent (or docker is not running): run .ci/build-image.sh"
    elif labels.get(HASH_LABEL) != inputs_hash():
        reason = f"image {IMAGE} was built from other sources than this checkout's: run .ci/build-image.sh"
    else:
        return labels
    if required:
        pytest.fail(f"{reason} (EXPBUILD_REQUIRE_IMAGE=1)")
    pytest.skip(reason)


def test_default_command_is_help_listing_the_subcommands():
    out = run()
    for subcommand in ("run", "operator", "agent", "crd"):
        assert f"    {subcommand} " in out, out


@pytest.mark.parametrize("subcommand", ["operator", "agent"])
def test_subcommand_help(subcommand):
    assert f"usage: expbuild-isolation {subcommand}" in run(subcommand, "--help")


def test_default_user_is_unprivileged_10001():
    assert run("-u", entrypoint="id").strip() == "10001"
    assert run("-un", entrypoint="id").strip() == "expbuild"
    assert run("-c", "echo $HOME", entrypoint="sh").strip() == "/tmp"


def test_hardened_read_only_run_prints_the_repository_crd():
    assert run("crd", options=tuple(HARDENED)) == (ROOT / "crds" / "executiontask.yaml").read_text()


def test_busybox_runs_as_the_supervisor(tmp_path):
    assert run("sh", "-c", "echo supervised", entrypoint="/bin/busybox", options=tuple(HARDENED)) == "supervised\n"
    assert "EXPBUILD_SUPERVISOR_BINARY=/bin/busybox" in run(entrypoint="env")


def test_busybox_is_static(tmp_path):
    container = docker("create", IMAGE).stdout.strip()
    try:
        docker("cp", "-L", f"{container}:/bin/busybox", str(tmp_path / "busybox"))
    finally:
        docker("rm", container)
    segments = program_header_types((tmp_path / "busybox").read_bytes())
    assert segments, "no program headers"
    assert PT_INTERP not in segments, "busybox asks for a dynamic loader (PT_INTERP): not static"


PT_INTERP = 3


def program_header_types(elf: bytes) -> list[int]:
    """The p_type of every program header of a 64-bit little-endian ELF file."""
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1, "not a 64-bit little-endian ELF"
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]


def test_installed_distributions_are_the_lock():
    """Exactly the pins and the package: pip and setuptools left with the install stage."""
    lock = {}
    for line in (ROOT / "image" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[normalize(name)] = version
    listing = run("-c", "import importlib.metadata as m\nfor d in m.distributions(): print(d.name, d.version)",
                  entrypoint="/opt/expbuild/bin/python")
    installed = {normalize(name): version for name, version in (line.split() for line in listing.splitlines())}
    assert installed.pop("expbuild-isolation") == __version__
    assert installed == lock


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` is ``pyyaml``, ``typing_extensions``...)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_is_slim():
    """The Python runtime, busybox and the venv only (it was 341 MB as a Debian minbase with a full venv)."""
    size = int(docker("image", "inspect", "--format", "{{ .Size }}", IMAGE).stdout)
    assert size < SIZE_BUDGET, f"{IMAGE} is {size / 1e6:.0f} MB, over the {SIZE_BUDGET / 1e6:.0f} MB budget"


# 150.7 MB (docker) before image signatures; cryptography's Rust/OpenSSL extension, cffi and pycparser add
# 17.9 MB to the venv (173 MB as podman measures the image built with them).
SIZE_BUDGET = 180_000_000


def test_tls_verifies_with_the_image_ca_bundle():
    """OpenSSL's default paths lead to the CA bundle (the kubernetes client and aiohttp verify with them)."""
    out = run("-c", "import ssl; print(ssl.create_default_context().cert_store_stats()['x509_ca'])",
              entrypoint="/opt/expbuild/bin/python", options=tuple(HARDENED))
    assert int(out) > 100


def test_name_lookups_read_etc_hosts_before_dns():
    """glibc without nsswitch.conf asks DNS first, and a cluster DNS's "no such name" would be final."""
    nsswitch = run("/etc/nsswitch.conf", entrypoint="cat")
    assert "hosts: files dns" in nsswitch.splitlines()
    assert run("hosts", "localhost", entrypoint="getent", options=("--network", "none")).split()[0] in {
        "127.0.0.1", "::1"}


def test_the_agent_loads_seccomp_filters_and_unshares_inside_the_image():
    """What the namespace executor does in the agent's container, done by the code in the image.

    As root with CAP_SYS_ADMIN (the agent's non-privileged mode): a child unshares a mount namespace
    and mounts a tmpfs (the control); another loads the strict profile through libseccomp and the
    kernel then refuses it the same unshare (EPERM).
    """
    out = run("-c", AGENT_PROBE, entrypoint="/opt/expbuild/bin/python",
              options=("--user", "0", "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
                       "--security-opt", "apparmor=unconfined", "--network", "none"))
    answers = json.loads(out)
    assert answers["control"] == "mounted", answers
    assert answers["filtered"] == f"OSError {errno.EPERM}", answers
    assert answers["seccomp_mode"] == "2", answers


AGENT_PROBE = """
import json, os
from expbuild_isolation.executors import linux, seccomp

def in_child(step):
    read, write = os.pipe()
    if os.fork() == 0:
        try:
            answer = step()
        except OSError as exc:
            answer = f"OSError {exc.errno}"
        os.write(write, answer.encode())
        os._exit(0)
    os.close(write)
    os.wait()
    return os.read(read, 4096).decode()

def control():
    linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWUTS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    linux.mount("tmpfs", "/tmp", "tmpfs", 0, "size=1m")
    open("/tmp/probe", "w").write("x")
    return "mounted"

def filtered():
    seccomp.load_compiled(seccomp.compile_filter("expbuild-strict"))
    linux.unshare(linux.CLONE_NEWUTS)
    return "unshared"

def seccomp_mode():
    seccomp.load_compiled(seccomp.compile_filter("expbuild-strict"))
    status = open("/proc/self/status").read()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Seccomp:"))

print(json.dumps({"control": in_child(control), "filtered": in_child(filtered), "seccomp_mode": in_child(seccomp_mode)}))
"""


def test_no_compilers_in_the_image():
    found = docker("run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
                   "for tool in cc gcc g++ clang make ld as; do command -v $tool; done; true").stdout
    assert found == ""


def test_labels(current_image):
    assert current_image["org.opencontainers.image.version"] == __version__
    assert current_image["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert current_image["org.opencontainers.image.source"].startswith("https://")
    assert len(current_image[HASH_LABEL]) == 64
    assert current_image["expbuild.io/base"]
