"""The ExecutionTask API: pydantic models, quantities, CRD generation. Imports nothing else of ours."""

from .quantities import QuantityError, format_bytes, parse_bytes, parse_cpu, parse_duration
from .task import (
    API_VERSION, GROUP, KIND, PLURAL, VERSION, ExecutionTask, ExecutionTaskSpec, ExecutionTaskStatus,
    IsolationLevel, NetworkMode, Phase,
)

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "ExecutionTask", "ExecutionTaskSpec",
    "ExecutionTaskStatus", "IsolationLevel", "NetworkMode", "Phase", "QuantityError", "format_bytes",
    "parse_bytes", "parse_cpu", "parse_duration",
]
