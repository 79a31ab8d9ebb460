"""The attacks ``selftest`` runs and the escape suite parametrizes over, in the order of their rows."""

from __future__ import annotations

from . import filesystem, memory, network, processes, syscalls
from .attack import Attack

ATTACKS: list[Attack] = [*filesystem.ATTACKS, *network.ATTACKS, *processes.ATTACKS, *memory.ATTACKS,
                         *syscalls.ATTACKS]
BY_KEY = {attack.key: attack for attack in ATTACKS}
