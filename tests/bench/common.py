"""What the KMock benchmarks share: latency summaries and a standalone emulator to measure against."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    """p50, p99 and max in seconds (4 decimals); empty for no samples."""
    if not values:
        return {}
    return {"p50": round(statistics.median(values), 4), "p99": round(percentile(values, 0.99), 4),
            "max": round(max(values), 4)}


async def on_emulator(measure: Callable[[Any], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run ``measure`` against a fresh KMock Kubernetes emulator (the script's own, outside pytest)."""
    import kmock

    async with kmock.KubernetesEmulator() as server, kmock.Server(server):
        return await measure(server)
