"""Assemble the image's root file system from the build stage's Debian packages: the Python runtime only.

    python3.11 image/runtime_root.py /runtime /opt/expbuild

Run in the Containerfile's install stage (stdlib only, no network). The final stage is ``FROM scratch``
plus this root and the venv, so the image holds no package manager, no perl, no bash, no coreutils:

- the files dpkg lists for ``ROOTS``, for the packages holding the libraries that the venv's compiled
  modules link (``ldd``; e.g. libstdc++ for frozenlist), and for everything they depend on
  (``Pre-Depends`` and ``Depends``, the first installed alternative), minus documentation,
  translations and ``SKIP_PACKAGES``;
- the bytecode Debian compiled for the standard library at install time (dpkg does not list it, and
  the root is read-only at run time, so without it every start would compile the stdlib again);
- static busybox at /bin/busybox (the Job path's supervisor) and a link for each of its applets that
  no package provides (``sh``, ``id``, ``env``, ...: the shell a namespace task finds in the agent);
- the CA bundle where OpenSSL looks by default, ``/etc/ld.so.cache`` (``ctypes.util.find_library``,
  which pyseccomp uses to load libseccomp, asks ``ldconfig -p``), users root, nobody and expbuild
  (10001), ``nsswitch.conf``, and the dpkg status of what was taken, so image scanners see the packages.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

# python3.11's runtime; libseccomp2 for the namespace executor's filters; libc-bin for ldconfig.
ROOTS = ("python3.11-minimal", "libpython3.11-stdlib", "libseccomp2", "busybox-static", "libc-bin")
# Install-time machinery, wanted only by maintainer scripts, which never run here (debconf's questions;
# readline-common's install-info trigger would drag in dpkg and tar).
SKIP_PACKAGES = {"debconf", "debconf-2.0", "dpkg", "install-info"}
SKIP_PREFIXES = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/locale/",
                 "/usr/share/lintian/", "/usr/share/bug/",
                 # the stdlib's regression-test support, 2to3 and help()'s topic texts: never used here
                 "/usr/lib/python3.11/test/", "/usr/lib/python3.11/lib2to3/", "/usr/lib/python3.11/pydoc_data/",
                 # glibc's iconv converters: nothing in the image calls iconv (Python has its own codecs)
                 "/usr/lib/x86_64-linux-gnu/gconv/", "/usr/lib/aarch64-linux-gnu/gconv/")
BUSYBOX = "/bin/busybox"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
USERS = {"root": (0, "/root", "/bin/sh"), "nobody": (65534, "/nonexistent", "/usr/sbin/nologin"),
         "expbuild": (10001, "/tmp", "/usr/sbin/nologin")}


def dpkg_query(fmt: str, *packages: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f", fmt, *packages], check=True, capture_output=True,
                          text=True).stdout


def installed() -> set[str]:
    return {line.split()[0] for line in dpkg_query("${Package} ${db:Status-Abbrev}\n").splitlines()
            if line.split()[1:2] == ["ii"]}


def closure(roots: tuple[str, ...]) -> list[str]:
    """The roots and their dependencies, by dpkg's records; an alternative counts when it is installed."""
    have, seen, todo = installed(), set(), list(roots)
    while todo:
        package = todo.pop()
        if package in seen or package in SKIP_PACKAGES:
            continue
        if package not in have:
            sys.exit(f"runtime_root: {package} is not installed in the build stage (add it to the base)")
        seen.add(package)
        depends = dpkg_query("${Pre-Depends}, ${Depends}", package)
        for clause in filter(None, (c.strip() for c in depends.split(","))):
            names = [re.split(r"[\s:(]", alternative.strip())[0] for alternative in clause.split("|")]
            todo.append(next((name for name in names if name in have), names[0]))
    return sorted(seen)


def linked_packages(venv: Path) -> set[str]:
    """The packages holding the shared libraries that the venv's compiled modules need."""
    paths = set()
    for module in venv.rglob("*.so*"):
        linked = subprocess.run(["ldd", str(module)], check=False, capture_output=True, text=True).stdout
        if "not found" in linked:
            sys.exit(f"runtime_root: {module} needs a library the build stage lacks:\n{linked}")
        found = {os.path.realpath(path) for path in re.findall(r"=> (/\S+)", linked)}
        paths.update(path for path in found if not path.startswith(f"{venv.resolve()}/"))  # a wheel's own
    owners: set[str] = set()
    for path in sorted(paths):   # dpkg knows a library under /usr/lib or, before the /usr merge, /lib
        found = subprocess.run(["dpkg", "-S", path, path.removeprefix("/usr")], check=False, capture_output=True,
                               text=True).stdout
        holders = {line.split(":")[0] for line in found.splitlines() if ": /" in line}
        if not holders:
            sys.exit(f"runtime_root: no package holds {path}, which a compiled module in {venv} needs")
        owners |= holders
    return owners


def package_files(package: str) -> list[str]:
    listed = subprocess.run(["dpkg", "-L", package], check=True, capture_output=True, text=True).stdout
    return [path for path in listed.splitlines() if path not in ("/.", "") and not path.startswith(SKIP_PREFIXES)]


def copy_path(path: str, root: Path) -> None:
    """Copy one file or symlink under ``root`` (a directory only as an empty one, with its mode)."""
    source, target = Path(path), root / path.lstrip("/")
    info = source.lstat()
    if stat.S_ISDIR(info.st_mode):
        if not target.exists():
            target.mkdir(parents=True)
            target.chmod(stat.S_IMODE(info.st_mode))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        return
    if stat.S_ISLNK(info.st_mode):
        target.symlink_to(os.readlink(source))
    else:
        shutil.copy2(source, target)   # keeps mtimes: the stdlib's bytecode is checked against them


def bytecode_of(path: str) -> list[str]:
    """The cached bytecode of a standard library module (compiled by Debian's py3compile)."""
    if not (path.startswith("/usr/lib/python3") and path.endswith(".py")):
        return []
    source = Path(path)
    cache = source.parent / "__pycache__"
    return [str(pyc) for pyc in cache.glob(f"{source.stem}.cpython-*.pyc")] if cache.is_dir() else []


def merged_usr(root: Path) -> None:
    """The top-level links of a merged-/usr system (/bin -> usr/bin, ...), as in the build stage."""
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        link = Path("/") / name
        if link.is_symlink():
            (root / "usr" / os.readlink(link).removeprefix("usr/")).mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(os.readlink(link))


def busybox_applets(root: Path) -> None:
    applets = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True).stdout
    for applet in applets.split():
        target = root / applet
        if not (target.exists() or target.is_symlink()):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(BUSYBOX)


def system_files(root: Path, packages: list[str]) -> None:
    (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
    shutil.copy2(CA_BUNDLE, root / CA_BUNDLE.lstrip("/"))
    openssl_dir = root / "usr/lib/ssl"               # OpenSSL's default OPENSSLDIR on Debian
    openssl_dir.mkdir(parents=True, exist_ok=True)
    (openssl_dir / "cert.pem").symlink_to(CA_BUNDLE)
    (openssl_dir / "certs").symlink_to("/etc/ssl/certs")
    (root / "etc/passwd").write_text("".join(f"{name}:x:{uid}:{uid}:{name}:{home}:{shell}\n"
                                             for name, (uid, home, shell) in USERS.items()))
    (root / "etc/group").write_text("".join(f"{name}:x:{uid}:\n" for name, (uid, _, _) in USERS.items()))
    # Debian's defaults (a maintainer script writes them): without the file glibc asks DNS before
    # /etc/hosts, and a cluster's DNS answering "no such name" for localhost would be final.
    (root / "etc/nsswitch.conf").write_text("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
                                            "networks: files\n")
    for directory, mode in (("tmp", 0o1777), ("root", 0o700), ("proc", 0o555), ("sys", 0o555),
                            ("dev", 0o755), ("run", 0o755), ("var/lib/dpkg", 0o755)):
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory).chmod(mode)
    status = subprocess.run(["dpkg-query", "-s", *packages], check=True, capture_output=True, text=True).stdout
    (root / "var/lib/dpkg/status").write_text(status)
    subprocess.run(["ldconfig", "-r", str(root)], check=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit("usage: runtime_root.py ROOT VENV")
    root, venv = Path(argv[0]), Path(argv[1])
    root.mkdir(parents=True, exist_ok=True)
    merged_usr(root)
    packages = closure((*ROOTS, *sorted(linked_packages(venv))))
    for package in packages:
        for path in package_files(package):
            for each in (path, *bytecode_of(path)):
                copy_path(each, root)
    busybox_applets(root)
    system_files(root, packages)
    print(f"runtime_root: {len(packages)} packages: {' '.join(packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
