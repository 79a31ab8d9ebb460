"""kopf's per-object storages, emptied: the operator has event handlers only, and kopf would copy for nothing.

kopf builds a "diff base" of every object on every event (a deep copy of the body) and strips its
progress records from it (two more deep copies with the default storage), whatever handlers the
operator has. Only change-detecting handlers (``on.create``/``update``/``delete``/``field``, daemons,
timers) read that diff. Our handlers are all ``on.event``, so under a burst of tasks the copying was
a quarter of the operator's CPU (issue #16) and bought nothing. These storages keep and build nothing.

They are correct only while no change-detecting handler is registered: ``make_registry`` registers
none, and ``tests/controller/test_registry.py`` fails if one is added.
"""

from __future__ import annotations

from typing import Any

import kopf

_NOTHING: Any = {}


class NoDiffBase(kopf.DiffBaseStorage):
    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return _NOTHING

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        pass


class NoProgress(kopf.ProgressStorage):
    def fetch(self, *, key: Any, body: Any) -> Any:
        return None

    def store(self, *, key: Any, record: Any, body: Any, patch: Any) -> None:
        pass

    def purge(self, *, key: Any, body: Any, patch: Any) -> None:
        pass

    def touch(self, *, body: Any, patch: Any, value: str | None) -> None:
        pass

    def clear(self, *, essence: Any) -> Any:
        return essence
