"""The batch-job runner shared by every batch command: `run_job` with a `Task`, on an engine.

- `tfsky.batch.runner`: inputs into items, skip-complete, failures, the `Report`, the `Listener`
  protocol, and the default `LocalEngine` (this process, with a reader and writer threads);
- `tfsky.batch.ray_engine`: `RayEngine`, the same jobs on a Ray cluster (``--engine ray``; Ray is an
  optional extra, imported only when `RayEngine` is asked for).
"""

from __future__ import annotations

from typing import Any

from tfsky.batch.runner import (
    Decoded,
    Engine,
    Failure,
    Item,
    Listener,
    LocalEngine,
    Pending,
    Report,
    Status,
    Task,
    attempt,
    collect_items,
    record,
    run_items,
    run_job,
)

__all__ = [
    "Decoded",
    "Engine",
    "Failure",
    "Item",
    "Listener",
    "LocalEngine",
    "Pending",
    "RayEngine",
    "Report",
    "Status",
    "Task",
    "attempt",
    "collect_items",
    "record",
    "run_items",
    "run_job",
]


def __getattr__(name: str) -> Any:
    """`RayEngine` on first use, so that importing the runner does not import Ray."""
    if name == "RayEngine":
        from tfsky.batch.ray_engine import RayEngine

        return RayEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
