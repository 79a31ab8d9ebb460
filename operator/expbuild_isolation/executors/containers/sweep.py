"""What a starting worker removes: containers no live executor will, and the parent cgroups they leave.

Two rules, each enough on its own:

- a container of this worker (label ``worker-id``) whose owner is gone. The owner label names the process
  that created it as ``host:pid:start`` (the start time from /proc/<pid>/stat), so a pid reused by another
  process -- a restarted agent container often gets the pid its predecessor had -- is not taken for the
  owner. Labels from before the start time was recorded (``host:pid``) are judged by the pid alone.
- any container of ours (any worker) past its ``sweep-after`` label: its own init ended it at its deadline
  (``deadline.py``), or it ran without one; either way no executor waits for it any more.

The listing is one call that returns labels and names; nothing is inspected one by one, so a container that
another executor removes meanwhile costs nothing (removing what is gone is fine).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable

from ..cgroups import pid_alive
from .spec import LABEL_DEADLINE, LABEL_OWNER, LABEL_WORKER


def process_start(pid: int | str) -> str | None:
    """The start time of process ``pid`` (clock ticks after boot: field 22 of /proc/<pid>/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19].decode() if len(fields) > 19 else None


def owner_label() -> str:
    """This process as the owner of what it creates."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start('self') or ''}"


def owner_alive(owner: str) -> bool:
    """The owner label names a live process on this host (another host's owner counts as alive: not ours
    to judge)."""
    parts = owner.split(":")
    if len(parts) == 2:
        parts.append("")
    if len(parts) != 3:
        return bool(owner)
    host, pid, start = parts
    if host != socket.gethostname():
        return bool(host)
    if not pid_alive(pid):
        return False
    return not start or process_start(pid) == start


def past_deadline(labels: dict[str, str], now: float) -> bool:
    value = labels.get(LABEL_DEADLINE, "")
    return value.isdigit() and int(value) < now


def to_remove(listing: Iterable[dict], *, worker_id: str, owner: str, now: float | None = None) -> list[str]:
    """The names, in a listing of the engine's containers (``api.containers``), that the sweep removes."""
    now = time.time() if now is None else now
    names = []
    for entry in listing:
        labels = entry.get("Labels") or {}
        name = (entry.get("Names") or [""])[0].lstrip("/")
        if not name:
            continue
        made_by = labels.get(LABEL_OWNER, "")
        orphan = labels.get(LABEL_WORKER) == worker_id and made_by != owner and not owner_alive(made_by)
        if orphan or past_deadline(labels, now):
            names.append(name)
    return names


def sweep(api, *, worker_id: str, owner: str, remove: Callable[[str], None]) -> tuple[list[str], set[str]]:  # type: ignore[no-untyped-def]
    """Remove what ``to_remove`` names; returns (removed, the names of every other container of ours)."""
    listing = api.containers(all=True, filters={"label": LABEL_WORKER})
    removed = to_remove(listing, worker_id=worker_id, owner=owner)
    for name in removed:
        remove(name)
    others = {(entry.get("Names") or [""])[0].lstrip("/") for entry in listing} - set(removed)
    return removed, others
