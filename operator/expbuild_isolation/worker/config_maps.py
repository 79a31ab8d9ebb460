"""ConfigMap inputs: where a task's ConfigMaps come from, and how their keys become workspace files.

In a cluster the node agent fetches each ConfigMap from the task's own namespace; on one machine
``expbuild-isolation run`` reads ``<name>.yaml`` from the directory the task file is in. Either way the
name is a Kubernetes object name (``api.task.object_name_problem``), so it carries no path, and the local
file is opened without following a symlink: a task file can name only what lies beside it.

What a ConfigMap holds is checked as the API server would: keys are file names of letters, digits, '-',
'_' and '.', ``data`` values are strings, ``binaryData`` values are base64. A bad one is an ``InvalidTask``
naming the ConfigMap and the key, never a traceback and never a quote of the file's content.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..api.task import object_name_problem
from ..executors.workspace import InputBlob

MAX_CONFIG_MAP_BYTES = 1 << 20  # the API server's limit for one ConfigMap; a local file may be a little larger
_FILE_SLACK = 1 << 20           # YAML overhead (keys, indentation, base64) around those bytes
_KEY = re.compile(r"[-._a-zA-Z0-9]+")

ConfigMapLookup = Callable[[str], dict[str, Any]]


class ConfigMapError(Exception):
    """A ConfigMap input cannot be used; the message names it (and the key) and says why."""


def read_beside(directory: Path) -> ConfigMapLookup:
    """The local lookup: ConfigMap ``name`` is the manifest ``directory/<name>.yaml`` (no symlink followed)."""
    def lookup(name: str) -> dict[str, Any]:
        problem = object_name_problem(name)
        if problem:
            raise ConfigMapError(f"configMap {name[:80]!r} {problem}")
        return _parse(name, _read_no_follow(directory, f"{name}.yaml"))
    return lookup


def _read_no_follow(directory: Path, file_name: str) -> bytes:
    shown = directory / file_name
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigMapError(f"cannot open the task's directory {directory}: {exc.strerror}") from None
    try:
        fd = os.open(file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise ConfigMapError(f"no ConfigMap file {shown} (locally a ConfigMap is read from <name>.yaml "
                                 f"next to the task)") from None
        if exc.errno == errno.ELOOP:
            raise ConfigMapError(f"{shown} is a symbolic link; a ConfigMap file must be a regular file next "
                                 f"to the task") from None
        raise ConfigMapError(f"cannot open {shown}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigMapError(f"{shown} is not a regular file")
        if info.st_size > MAX_CONFIG_MAP_BYTES + _FILE_SLACK:
            raise ConfigMapError(f"{shown} is {info.st_size} bytes; a ConfigMap holds at most "
                                 f"{MAX_CONFIG_MAP_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_CONFIG_MAP_BYTES + _FILE_SLACK + 1)
    except OSError as exc:
        raise ConfigMapError(f"cannot read {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)


class _NoAliases(yaml.SafeLoader):
    """A ConfigMap file needs no anchors; refusing aliases makes a billion-laughs file cheap to reject."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            raise ConfigMapError("uses a YAML alias (*name); a ConfigMap file needs none")
        return super().compose_node(parent, index)


def _parse(name: str, raw: bytes) -> dict[str, Any]:
    try:
        document = yaml.load(raw.decode("utf-8"), Loader=_NoAliases)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError:
        raise ConfigMapError(f"{name}.yaml is not UTF-8 text") from None
    except ConfigMapError as exc:
        raise ConfigMapError(f"{name}.yaml {exc}") from None
    except yaml.MarkedYAMLError as exc:
        where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise ConfigMapError(f"{name}.yaml is not valid YAML{where}: {exc.problem}") from None
    except (yaml.YAMLError, RecursionError):
        raise ConfigMapError(f"{name}.yaml is not valid YAML") from None
    if not isinstance(document, dict) or document.get("kind") != "ConfigMap":
        raise ConfigMapError(f"{name}.yaml is not a ConfigMap manifest (kind: ConfigMap)")
    return document


def blobs_of(config_map: dict[str, Any], name: str, directory: str) -> list[InputBlob]:
    """The files ``config_map`` puts under ``directory`` (workspace-relative; ``.`` is the workspace)."""
    prefix = "" if directory == "." else directory + "/"
    data, binary = config_map.get("data") or {}, config_map.get("binaryData") or {}
    for field, section in (("data", data), ("binaryData", binary)):
        if not isinstance(section, dict):
            raise ConfigMapError(f"configMap {name!r}: {field} is not a map of file names to contents")
    blobs: list[InputBlob] = []
    for key, value in data.items():
        _check_key(name, "data", key)
        if not isinstance(value, str):
            raise ConfigMapError(f"configMap {name!r}: data[{key!r}] is not a string (quote it in YAML)")
        blobs.append(InputBlob(prefix + key, value.encode()))
    for key, value in binary.items():
        _check_key(name, "binaryData", key)
        try:
            content = base64.b64decode(value, validate=True) if isinstance(value, str) else None
        except (binascii.Error, ValueError):
            content = None
        if content is None:
            raise ConfigMapError(f"configMap {name!r}: binaryData[{key!r}] is not base64")
        if key in data:
            raise ConfigMapError(f"configMap {name!r}: {key!r} is in both data and binaryData")
        blobs.append(InputBlob(prefix + key, content))
    if sum(len(blob.content) for blob in blobs) > MAX_CONFIG_MAP_BYTES:
        raise ConfigMapError(f"configMap {name!r} holds more than {MAX_CONFIG_MAP_BYTES} bytes")
    return blobs


def _check_key(name: str, field: str, key: Any) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key) or key in (".", "..") or len(key) > 253:
        raise ConfigMapError(f"configMap {name!r}: {field} key {str(key)[:80]!r} is not a file name (letters, "
                             f"digits, '-', '_' and '.'; not '.' or '..')")
