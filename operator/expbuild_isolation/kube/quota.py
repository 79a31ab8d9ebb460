"""Per-namespace quotas of unfinished tasks: who may start now, who waits, who is next. Pure bookkeeping.

A task *holds a slot* from the moment the operator decides to start it (Scheduled, Running) until it
finishes or is deleted. Tasks beyond a namespace's quota wait, and start oldest first (creation time, then
name: the API server's creationTimestamp has one-second resolution). A task may start only when a slot is
free and no older task of its namespace is waiting, so a newcomer never overtakes the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Order = tuple[str, str]  # (creationTimestamp as RFC 3339, name): sorts oldest first


def namespace_of(key: str) -> str:
    return key.split("/", 1)[0]


@dataclass
class NamespaceQueue:
    holding: set[str] = field(default_factory=set)          # task keys holding a slot
    waiting: dict[str, Order] = field(default_factory=dict)  # task key -> its place in line


class Quotas:
    def __init__(self) -> None:
        self._queues: dict[str, NamespaceQueue] = {}

    def _queue(self, key: str) -> NamespaceQueue:
        return self._queues.setdefault(namespace_of(key), NamespaceQueue())

    def holding(self, namespace: str) -> int:
        queue = self._queues.get(namespace)
        return len(queue.holding) if queue else 0

    def waiting(self, namespace: str) -> list[str]:
        """The keys waiting in ``namespace``, oldest first."""
        queue = self._queues.get(namespace)
        return [key for key, _ in sorted(queue.waiting.items(), key=lambda item: item[1])] if queue else []

    def started(self, key: str) -> None:
        """``key`` holds a slot (seen Scheduled or Running; quota or not, it counts)."""
        queue = self._queue(key)
        queue.waiting.pop(key, None)
        queue.holding.add(key)

    def wait(self, key: str, order: Order) -> None:
        """``key`` waits in line (a task already waiting when the operator started)."""
        self._queue(key).waiting[key] = order

    def gone(self, key: str) -> bool:
        """``key`` finished or was deleted; True when that freed a slot."""
        queue = self._queues.get(namespace_of(key))
        if queue is None:
            return False
        queue.waiting.pop(key, None)
        if key not in queue.holding:
            return False
        queue.holding.discard(key)
        return True

    def try_start(self, key: str, order: Order, limit: int | None) -> bool:
        """Take a slot for ``key`` if its namespace has one free and nobody older waits; else it waits in line."""
        queue = self._queue(key)
        if key in queue.holding:
            return True
        older = any(other < order for other_key, other in queue.waiting.items() if other_key != key)
        if limit is None or (len(queue.holding) < limit and not older):
            self.started(key)
            return True
        queue.waiting[key] = order
        return False

    def next_up(self, namespace: str, limit: int | None) -> list[str]:
        """The waiting keys that fit in the free slots now, oldest first (each still calls ``try_start``)."""
        queue = self._queues.get(namespace)
        if queue is None:
            return []
        waiting = self.waiting(namespace)
        free = len(waiting) if limit is None else max(0, limit - len(queue.holding))
        return waiting[:free]
