"""What every resource of this API shares: the camelCase model base, object metadata, the isolation levels,
network modes and phases (the ExecutionTask's and the ExecutionPolicy's vocabulary)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              use_enum_values=False, validate_default=True)


class IsolationLevel(str, Enum):
    """How strongly a task is kept from the host, weakest first."""

    NONE = "None"
    PROCESS = "Process"
    FILESYSTEM = "Filesystem"
    CONTAINER = "Container"
    VM = "VM"

    @property
    def rank(self) -> int:
        return list(IsolationLevel).index(self)

    # All four, not functools.total_ordering: str already defines them, and max() or >= would then compare
    # the names ("None" > "Container").
    def __lt__(self, other: object) -> bool:
        return self.rank < other.rank if isinstance(other, IsolationLevel) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.rank <= other.rank if isinstance(other, IsolationLevel) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.rank > other.rank if isinstance(other, IsolationLevel) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.rank >= other.rank if isinstance(other, IsolationLevel) else NotImplemented


class NetworkMode(str, Enum):
    NONE = "None"
    LOCALHOST = "Localhost"
    RESTRICTED = "Restricted"
    FULL = "Full"


class Phase(str, Enum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLED = "Cancelled"
    ERROR = "Error"

    @property
    def finished(self) -> bool:
        return self in FINISHED_PHASES


FINISHED_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.TIMED_OUT, Phase.CANCELLED, Phase.ERROR})


class ObjectMeta(BaseModel):
    """The slice of ObjectMeta this project reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = Field("", max_length=253)
    namespace: str = ""
    uid: str = ""
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
