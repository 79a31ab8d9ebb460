"""Client credentials that kopf hands over as data, written to files the HTTP clients can load.

Shared by the operator (``controller``) and the node agent (``agent``), which may not import each other.
"""

from __future__ import annotations

import base64
import tempfile
from typing import Any


def pem_file(data: Any, *, prefix: str = "expbuild-") -> str:
    """Write PEM (or base64 of PEM, as kubeconfig ``*-data`` fields hold it) to a private file; return its path."""
    raw = data if isinstance(data, bytes) else str(data).encode()
    if not raw.lstrip().startswith(b"-----"):
        raw = base64.b64decode(raw)
    handle = tempfile.NamedTemporaryFile(prefix=prefix, delete=False)
    handle.write(raw)
    handle.close()
    return handle.name
