"""The state of a served model version, as TF Serving's ``GetModelStatus`` reports it.

Shared by the client (which parses it) and the development server (which
reports it), so neither imports the other.
"""

from __future__ import annotations

import dataclasses

AVAILABLE, LOADING, END = "AVAILABLE", "LOADING", "END"


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """State of one model version: ``LOADING``, ``AVAILABLE`` or ``END`` (unloaded or failed, with the error)."""

    version: int
    state: str
    error: str = ""
