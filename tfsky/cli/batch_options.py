"""What every batch command shares on the command line: the engine flags, one progress bar, the summary line.

Failures are printed to stderr as ``failed <file>: <reason>`` when they
happen; the last line, on stdout, is ``done N, skipped N, failed N -> OUT``;
the exit code is 1 if any item failed (`tfsky.batch.Report`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tfsky.batch import Engine, Listener, Report, Status
from tfsky.cli.messages import is_quiet
from tfsky.io.stores import as_path

T = TypeVar("T")
BIG_ITEM_STEPS = 64  # items with more steps (tiles) than this get a second, step-level progress bar

OutOption = Annotated[
    Path,
    typer.Option(
        "--out", "-o", parser=as_path, help="Output folder, or s3://bucket/prefix (an object store: see the README)."
    ),
]


class EngineName(str, enum.Enum):
    local = "local"
    ray = "ray"


EngineOption = Annotated[EngineName, typer.Option(help="local (this process) or ray (a Ray cluster: see --address).")]
AddressOption = Annotated[
    Optional[str],
    typer.Option(help="--engine ray: 'auto' or HOST:PORT of a running cluster (default: start Ray on this machine)."),
]
WorkersOption = Annotated[
    Optional[int],
    typer.Option(
        min=1, help="--engine ray: worker processes, each loads the model once (default: one per GPU, else per CPU)."
    ),
]
GpusPerWorkerOption = Annotated[
    Optional[float],
    typer.Option(min=0, help="--engine ray: GPUs per worker (default: 1 if the cluster has GPUs, else 0)."),
]
CpusPerWorkerOption = Annotated[
    int, typer.Option(min=1, help="--engine ray: CPUs reserved per worker, also its TensorFlow thread count.")
]


@dataclasses.dataclass(frozen=True)
class EngineFlags:
    """The engine flags of a batch command, handed to it as one argument (`engine_flags`)."""

    engine: EngineName = EngineName.local
    address: Optional[str] = None
    workers: Optional[int] = None
    gpus_per_worker: Optional[float] = None
    cpus_per_worker: int = 1

    def make(self) -> Optional[Engine]:
        """The engine named by ``--engine``: None for the local one, else a `tfsky.batch.RayEngine`."""
        if self.engine is EngineName.local:
            return None
        from tfsky.batch.ray_engine import RayEngine

        return RayEngine(
            address=self.address,
            workers=self.workers,
            gpus_per_worker=self.gpus_per_worker,
            cpus_per_worker=self.cpus_per_worker,
        )


ENGINE_OPTIONS = {
    "engine": EngineOption,
    "address": AddressOption,
    "workers": WorkersOption,
    "gpus_per_worker": GpusPerWorkerOption,
    "cpus_per_worker": CpusPerWorkerOption,
}


def engine_flags(command: Callable[..., T]) -> Callable[..., T]:
    """Give a command the engine flags (``--engine``, ``--address``, ``--workers``, ``--gpus-per-worker``,
    ``--cpus-per-worker``) in place of its ``engine: EngineFlags`` parameter, which receives them as one
    `EngineFlags`; the flags' defaults are the dataclass's.
    """
    signature = inspect.signature(command, eval_str=True)  # Typer reads the annotations of the new signature as such
    assert "engine" in signature.parameters, f"{command.__name__} has no engine parameter"
    defaults = EngineFlags()
    flags = [
        inspect.Parameter(
            name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation, default=getattr(defaults, name)
        )
        for name, annotation in ENGINE_OPTIONS.items()
    ]
    parameters = [
        flag
        for parameter in signature.parameters.values()
        for flag in (flags if parameter.name == "engine" else [parameter])
    ]

    @functools.wraps(command)
    def with_engine_flags(**kwargs: Any) -> T:
        given = EngineFlags(**{name: kwargs.pop(name) for name in ENGINE_OPTIONS})
        return command(**kwargs, engine=given)

    with_engine_flags.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_engine_flags.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return with_engine_flags


class JobProgress(Listener):
    """A `tfsky.batch.Listener` that draws a bar over items (and over the tiles of big items) on stderr.

    Failures are printed as one line each as they happen; ``quiet`` hides the bars only.
    """

    def __init__(self, quiet: bool = False):
        self.errors = Console(stderr=True, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.errors,
            disable=is_quiet(quiet),
            transient=True,
        )
        self.items = self.progress.add_task("images", total=None)
        self.steps = self.progress.add_task("tiles", total=None, visible=False)

    def __enter__(self) -> "JobProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def begin(self, items: int) -> None:
        self.progress.update(self.items, total=items)

    def item_started(self, source: Path, steps: int) -> None:
        self.progress.update(self.items, description=f"images ({source.name})")
        self.progress.reset(self.steps, total=steps, visible=steps > BIG_ITEM_STEPS)

    def steps_done(self, done: int, total: int) -> None:
        self.progress.update(self.steps, completed=done)

    def item_finished(self, source: Path, status: Status, reason: str = "") -> None:
        self.progress.update(self.steps, visible=False)
        self.progress.advance(self.items)
        if status == "failed":
            self.errors.print(f"failed {source}: {reason}", markup=False, soft_wrap=True)


def finish(report: Report, out: Path, quiet: bool = False) -> None:
    """Print the summary line (unless ``quiet``) and exit with the report's exit code when it is not 0."""
    if not quiet:
        Console(highlight=False, soft_wrap=True).print(f"{report.summary()} -> {out}", markup=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)
