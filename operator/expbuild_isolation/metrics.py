"""Prometheus metrics of every component (operator, agent, local runs), and the /metrics server.

Collectors live in the default registry; ``start_metrics_server(port)`` serves
them. Labels stay low-cardinality: phase, executor and namespace names, never task names.

Accounting per namespace (``account``): tasks by the phase they ended in, the CPU seconds they used and
their memory-byte-seconds (peak memory times run time: every backend reports a peak, none a time series),
from the status the operator or the node agent writes when a task finishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
_QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

TASKS_TOTAL = Counter("expbuild_tasks_total", "Tasks that reached a finished phase.", ["phase", "executor"])
TASK_DURATION = Histogram("expbuild_task_duration_seconds", "Run time of finished tasks, start to completion.",
                          ["executor"], buckets=_DURATION_BUCKETS)
TASK_QUEUE = Histogram("expbuild_task_queue_seconds", "Time from task creation to its command starting.",
                       ["executor"], buckets=_QUEUE_BUCKETS)
TASKS_RUNNING = Gauge("expbuild_tasks_running", "Tasks whose command is running now.", ["executor"])
RECONCILE_ERRORS = Counter("expbuild_reconcile_errors_total", "Handler or API failures while reconciling tasks.")
EXECUTOR_HEALTHY = Gauge("expbuild_executor_healthy", "1 when the executor passed its last health check.",
                         ["executor"])


NAMESPACE_TASKS = Counter("expbuild_namespace_tasks_total", "Tasks that reached a finished phase, per namespace.",
                          ["namespace", "phase"])
NAMESPACE_CPU = Counter("expbuild_namespace_cpu_seconds_total", "CPU seconds (user + system) used by finished tasks, "
                        "per namespace.", ["namespace"])
NAMESPACE_MEMORY = Counter("expbuild_namespace_memory_byte_seconds_total", "Peak memory bytes times run seconds of "
                           "finished tasks, per namespace.", ["namespace"])


def account(namespace: str, status: Mapping[str, Any]) -> None:
    """Charge a finished task's use to its namespace, from its final status (camelCase, as patched)."""
    NAMESPACE_TASKS.labels(namespace=namespace, phase=status.get("phase") or "Unknown").inc()
    stats = status.get("stats") or {}
    cpu, peak, duration = stats.get("cpuTimeSeconds"), stats.get("peakMemoryBytes"), status.get("durationSeconds")
    if isinstance(cpu, (int, float)) and cpu > 0:
        NAMESPACE_CPU.labels(namespace=namespace).inc(cpu)
    if isinstance(peak, (int, float)) and isinstance(duration, (int, float)) and peak > 0 and duration > 0:
        NAMESPACE_MEMORY.labels(namespace=namespace).inc(peak * duration)


def task_finished(phase: str, executor: str, duration_seconds: float | None) -> None:
    TASKS_TOTAL.labels(phase=phase, executor=executor).inc()
    if duration_seconds is not None:
        TASK_DURATION.labels(executor=executor).observe(duration_seconds)


def task_started(executor: str, queue_seconds: float | None) -> None:
    if queue_seconds is not None and queue_seconds >= 0:
        TASK_QUEUE.labels(executor=executor).observe(queue_seconds)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on ``addr:port`` from a daemon thread."""
    start_http_server(port, addr=addr)
