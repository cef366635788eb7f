"""What every batch command shares on the command line: engine flags, one progress bar, the summary line.

Failures are printed to stderr as ``failed <file>: <reason>`` when they
happen; the last line, on stdout, is ``done N, skipped N, failed N -> OUT``;
the exit code is 1 if any item failed (`tfsky.jobs.Report`).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tfsky.cli.messages import is_quiet
from tfsky.io.stores import as_path
from tfsky.jobs import Engine, Report, Status

BIG_ITEM_STEPS = 64  # items with more steps (tiles) than this get a second, step-level progress bar

OutOption = Annotated[Path, typer.Option(
    "--out", "-o", parser=as_path, help="Output folder, or s3://bucket/prefix (an object store: see the README).")]


class EngineName(str, enum.Enum):
    local = "local"
    ray = "ray"


EngineOption = Annotated[EngineName, typer.Option(help="local (this process) or ray (a Ray cluster: see --address).")]
AddressOption = Annotated[Optional[str], typer.Option(
    help="--engine ray: 'auto' or HOST:PORT of a running cluster (default: start Ray on this machine).")]
WorkersOption = Annotated[Optional[int], typer.Option(
    min=1, help="--engine ray: worker processes, each loads the model once (default: one per GPU, else per CPU).")]
GpusPerWorkerOption = Annotated[Optional[float], typer.Option(
    min=0, help="--engine ray: GPUs per worker (default: 1 if the cluster has GPUs, else 0).")]
CpusPerWorkerOption = Annotated[int, typer.Option(
    min=1, help="--engine ray: CPUs reserved per worker, also its TensorFlow thread count.")]


def make_engine(engine: EngineName, address: Optional[str], workers: Optional[int],
                gpus_per_worker: Optional[float], cpus_per_worker: int) -> Optional[Engine]:
    """The engine named by ``--engine``: None for the local one, else a `tfsky.ray_engine.RayEngine`."""
    if engine is EngineName.local:
        return None
    from tfsky.ray_engine import RayEngine

    return RayEngine(address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                     cpus_per_worker=cpus_per_worker)


class JobProgress:
    """A `tfsky.jobs.Listener` that draws a bar over items (and over the tiles of big items) on stderr.

    Failures are printed as one line each as they happen; ``quiet`` hides the bars only.
    """

    def __init__(self, quiet: bool = False):
        self.errors = Console(stderr=True, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=self.errors, disable=is_quiet(quiet), transient=True,
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
