"""Why a task cannot be turned into Kubernetes objects; each error carries the status reason."""

from __future__ import annotations


class RenderError(ValueError):
    """The task cannot run in this cluster as asked; ``reason`` goes to status.reason and the Event."""

    reason = "Rejected"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ImageNotAllowed(RenderError):
    reason = "ImageNotAllowed"


class IsolationUnavailable(RenderError):
    reason = "IsolationUnavailable"
