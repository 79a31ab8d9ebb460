"""The worker TOML file (seed section 5): which executors, how configured, default limits.

A bad file gives one error naming the file and the key, e.g.
``worker.toml: executor.docker.memory_limit: unknown key (known: image, always_pull, ...)``.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..api.messages import shown
from ..api.policy import LocalPolicy
from ..executors.base import DEFAULT_OUTPUT_LIMIT
from ..executors.config import DockerConfig, HostConfig, NamespaceConfig, PodmanConfig
from .task_limits import TaskLimits

BackendName = Literal["host", "namespace", "docker", "podman"]
DEFAULT_CHAIN: tuple[BackendName, ...] = ("docker", "podman", "namespace", "host")


def default_work_dir() -> Path:
    """Per user, so that a directory root made once never locks other users out."""
    uid = os.getuid()
    return Path(tempfile.gettempdir()) / ("expbuild-worker" if uid == 0 else f"expbuild-worker-{uid}")


class ConfigError(Exception):
    """The worker file is unreadable or invalid; the message names the file and key."""


class PlatformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    os: str = "linux"
    arch: str = "x86_64"
    container: str | None = None


class ExecutorSection(BaseModel):
    """``[executor]``: ``type`` picks one backend, or ``auto`` walks ``chain``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "host", "namespace", "docker", "podman"] = "auto"
    chain: list[BackendName] = Field(default_factory=lambda: list(DEFAULT_CHAIN))
    host: HostConfig = Field(default_factory=HostConfig)
    namespace: NamespaceConfig = Field(default_factory=NamespaceConfig)
    docker: DockerConfig = Field(default_factory=DockerConfig)
    podman: PodmanConfig = Field(default_factory=PodmanConfig)

    @model_validator(mode="after")
    def _chain_not_empty(self) -> ExecutorSection:
        if self.type == "auto" and not self.chain:
            raise ValueError("chain: must name at least one executor when type is auto")
        return self

    def backends(self) -> list[BackendName]:
        """The backends to try, in order."""
        return list(self.chain) if self.type == "auto" else [self.type]


class WorkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker_id: str = "expbuild-worker"
    server_url: str | None = None
    cas_url: str | None = None
    instance_name: str = ""
    work_dir: Path = Field(default_factory=lambda: default_work_dir())
    max_concurrent_tasks: int = Field(4, ge=1)
    # Bytes of declared outputs digested per task, all together, sparse holes counted; more is reported as a
    # problem, not hashed (hashing is a blocking read of every byte, however few blocks a file has).
    max_output_bytes: int = Field(DEFAULT_OUTPUT_LIMIT, ge=0)
    isolation_minimum: Literal["None", "Process", "Filesystem", "Container", "VM"] = "None"
    platform: PlatformConfig = Field(default_factory=PlatformConfig)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)
    task_limits: TaskLimits = Field(default_factory=TaskLimits)
    policy: LocalPolicy | None = None  # [policy]: an ExecutionPolicy's knobs for every task (worker/policy.py)


MAX_CONFIG_BYTES = 1 << 20


def load_worker_config(path: str | Path) -> WorkerConfig:
    """Read and validate a worker TOML file; ConfigError names the file and the key.

    TOML refuses repeated keys itself; the file size is bounded before it is read, and nesting deep
    enough to exhaust tomllib's recursion is refused in one line.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes (the most a worker file may be)")
        raw = tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a worker file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    return parse_worker_config(raw, source=str(path))


def parse_worker_config(raw: dict, *, source: str = "<config>") -> WorkerConfig:
    try:
        return WorkerConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def _key_part(part: object) -> str:
    """One step of a key's path: a name as written, an index as [3], anything else quoted and short
    (a key a user wrote may hold a newline; the error stays one line)."""
    text = str(part)
    if isinstance(part, int) or text.isdigit():
        return f"[{text}]"
    if re.fullmatch(r"[A-Za-z_][-A-Za-z0-9_.]*", text) and len(text) <= 64:
        return text
    return f"[{shown(text, 30)}]"


def describe_validation_error(exc: ValidationError, *, unknown: str = "unknown key",
                              self_named: tuple[str, ...] = ()) -> str:
    """One line per problem: the key's path (``executor.chain[1]``), then what is wrong.

    ``unknown`` words an extra key; messages starting with one of ``self_named``
    already name their field (a model validator's) and are kept as they are.
    """
    lines = []
    for error in exc.errors():
        loc = [p for p in error["loc"] if not str(p).startswith(("function-", "union["))]
        key = ".".join(_key_part(p) for p in loc).replace(".[", "[") or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if self_named and message.startswith(self_named):
            lines.append(message)
        elif error["type"] == "extra_forbidden":
            lines.append(f"{key}: {unknown}")
        elif error["type"] == "missing":
            lines.append(f"{key}: required")
        else:
            lines.append(f"{key}: {message} (got {shown(error.get('input'))})")
    return "; ".join(dict.fromkeys(lines))
