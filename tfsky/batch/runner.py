"""The one batch-job runner: inputs in, outputs per item, resumable, failures reported.

Every batch command (``tfsky predict``, ``tfsky translate``, ``tfsky client
predict``, ...) supplies only a `Task`: the output files of one item and the
work that writes them. `run_job` does the rest, the same way for all of them:

1. checks the output folder once (it must be a folder that can be written);
2. expands the inputs into `Item` s (`collect_items`): image files, folders
   (recursive, sorted, hidden names and the output folder skipped) and ``.txt``
   manifests (one file or folder per line, relative to the manifest's folder,
   ``#`` starts a comment);
3. removes the temporaries a killed run left beside each output and skips the
   items whose outputs all exist (unless ``overwrite``), so a re-run finishes a
   job;
4. runs the other items on an engine (`LocalEngine` here, or
   `tfsky.batch.ray_engine.RayEngine` on a Ray cluster); an item that raises a
   `TfskyError` or `OSError` is recorded with its reason and the job goes on.
   A task may hand back the writing of an item's outputs (`Task.process`): the
   local engine runs it in a writer thread while the next item is computed;
   `attempt` (every other engine) runs it right away;
5. returns a `Report` (done / skipped / failed), whose `Report.summary` and
   `Report.exit_code` every command prints and returns alike.

Output stems: a file input ``a/b.jpg`` writes ``OUT/b*``; an image
``DIR/sub/c.png`` found in a folder input ``DIR`` writes ``OUT/sub/c*``; a
manifest keeps the relative sub-folders of its lines (a line that leaves the
manifest's folder writes by file name only). Two inputs that would write the
same outputs are a failure of the second, found before any work.

Progress is reported through one `Listener` protocol; the CLI draws its bars
with it (`tfsky.cli.batch_options`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, Literal, Optional, Protocol, Sequence, TypeVar, cast

from tfsky.errors import InputError, TfskyError
from tfsky.io.atomic import prepare_out_dir, remove_stale_temps
from tfsky.io.images import is_image_file, link_problem
from tfsky.io.stores import StorePath, as_path
from tfsky.progress import Progress

MANIFEST_SUFFIX = ".txt"
Status = Literal["done", "skipped", "failed"]
Failure = tuple[Path, str]
# what `Task.outputs` returns: the output files of one item, the completing one last (a tuple, or a
# dataclass with ``__iter__`` such as `tfsky.predict.outputs.OutputPaths`)
OutputsT = TypeVar("OutputsT", bound=Iterable[Path])


@dataclasses.dataclass(frozen=True)
class Item:
    """One input file and the output stem (relative to the output folder) it writes."""

    source: Path
    stem: Path


@dataclasses.dataclass
class Report:
    """What a job did: items done, skipped (already complete) and failed (with the reason)."""

    done: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    failed: list[Failure] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """``done N, skipped N, failed N``: the last line every batch command prints."""
        return f"done {len(self.done)}, skipped {len(self.skipped)}, failed {len(self.failed)}"

    @property
    def exit_code(self) -> int:
        """1 if any item failed, else 0."""
        return 1 if self.failed else 0


class Listener(Progress):
    """Progress hooks of a job: a `tfsky.progress.Progress` with per-item detail; every method is optional.

    By default `begin` is `Progress.started` and `item_finished` is `Progress.advanced` (with the file
    name), so a subclass that only overrides the `Progress` methods follows a job too; the rest is ignored. `Progress.finished` is the
    caller's to call when the job returns (the CLI's `tfsky.cli.batch_options.JobProgress` ends with its block).
    """

    def begin(self, items: int) -> None:
        """The job has ``items`` items in total (including those that will be skipped or fail)."""
        self.started(items, "images")

    def item_started(self, source: Path, steps: int) -> None:
        """Work on ``source`` starts; it takes ``steps`` steps (e.g. tiles). Local engine only."""

    def steps_done(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps of the current item are finished. Local engine only."""

    def item_finished(self, source: Path, status: Status, reason: str = "") -> None:
        """``source`` is ``done``, ``skipped`` or ``failed`` (with ``reason``)."""
        self.advanced(source.name)


class Decoded:
    """What `Task.read` returned, handed over once: `take` gives it and drops this reference.

    So `Task.process` holds the only reference and can free a big image as soon as it is drawn.
    """

    def __init__(self, value: Any):
        self._value = [value]

    def take(self) -> Any:
        return self._value.pop()


class Task(Generic[OutputsT]):
    """The per-item part of a job; subclasses override `outputs` and `process`, the rest is optional.

    A task must be picklable before `load` (the Ray engine ships it to each
    worker, which calls `load` once and then `read` + `process` per item).
    """

    def check(self) -> None:
        """Cheap checks before any item (model file, its kind); raise a `TfskyError` to stop the job."""

    def outputs(self, stem: Path) -> OutputsT:
        """The output files of output stem ``OUT/sub/name``, the one written last (it marks the item complete) last."""
        raise NotImplementedError

    def read(self, source: Path) -> Any:
        """Decode ``source`` before `process` (the local engine does it in a background thread). Defaults to None."""
        return None

    def load(self) -> None:
        """Heavy set-up (the model), once per process, after the first item is read."""

    def process(
        self, item: Item, decoded: Decoded, outputs: OutputsT, listener: Listener
    ) -> Optional[Callable[[], None]]:
        """Work on one item (``decoded.take()`` is what `read` returned); write each of ``outputs`` atomically.

        May return the writing instead (encoding and writing the outputs, the completing one last), as a
        callable the engine runs later, off the model's critical path; it may raise like `process`.
        """
        raise NotImplementedError

    def stops_the_job(self, err: Exception) -> bool:
        """True for errors that would fail every item alike (e.g. an unreachable server): they are raised."""
        return False


Pending = list[tuple[Item, Iterable[Path]]]


class Engine(Protocol):
    """Runs the pending items of a job and records each one in the report (`record`)."""

    def run(self, task: Task, pending: Pending, report: Report, listener: Listener) -> None: ...


def run_job(
    task: Task,
    inputs: Sequence[Path],
    out_dir: str | Path | StorePath,
    *,
    overwrite: bool = False,
    listener: Optional[Listener] = None,
    engine: Optional[Engine] = None,
) -> Report:
    """Run ``task`` over every item of ``inputs`` into ``out_dir``; see the module docstring.

    Args:
        task: Task. The per-item work and output names.
        inputs: sequence of Path. Files, folders (searched recursively) and ``.txt`` manifests.
        out_dir: str | Path. Output folder (created), or ``s3://bucket/prefix`` (`tfsky.io.stores`).
        overwrite: bool. Redo items whose outputs are complete. Defaults to False.
        listener: Listener. Progress hooks. Defaults to None (no progress).
        engine: Engine. Where the items run. Defaults to `LocalEngine()`.

    Raises:
        TfskyError: the output folder cannot be used, `Task.check` or `Task.load` failed, or an
            error `Task.stops_the_job`. Problems with single items are reported, not raised.
    """
    out_dir = as_path(out_dir)  # a local folder or an object-store prefix (s3://...)
    task.check()
    prepare_out_dir(out_dir)
    items, failures = collect_items(inputs, out_dir)
    # a `StorePath` prefix names outputs with the same arithmetic as a `Path` (`tfsky.io.stores`)
    return run_items(
        task,
        items,
        lambda stem: task.outputs(cast(Path, out_dir / stem)),
        failures,
        overwrite=overwrite,
        listener=listener,
        engine=engine,
    )


def run_items(
    task: Task,
    items: list[Item],
    outputs_of: Callable[[Path], Iterable[Path]],
    failures: Sequence[Failure] = (),
    *,
    overwrite: bool = False,
    listener: Optional[Listener] = None,
    engine: Optional[Engine] = None,
) -> Report:
    """Steps 3-5 of `run_job` for items already expanded, whose outputs are ``outputs_of(item.stem)``.

    For jobs whose outputs do not live in one output folder (``tfsky streams
    skymask`` writes beside each stream's manifest); ``failures`` are items that
    failed before any work. The caller has run `Task.check`.
    """
    listener = listener or Listener()
    report = Report(failed=list(failures))
    listener.begin(len(items) + len(failures))
    for source, reason in failures:
        listener.item_finished(source, "failed", reason)
    pending = unfinished(items, outputs_of, overwrite, report)
    for source in report.skipped:
        listener.item_finished(source, "skipped")
    if pending:
        (engine or LocalEngine()).run(task, pending, report, listener)
    return report


def unfinished(
    items: list[Item], outputs_of: Callable[[Path], Iterable[Path]], overwrite: bool, report: Report
) -> Pending:
    """The items to run with their outputs; items whose outputs all exist go to ``report.skipped``.

    Temporaries a killed run left beside the outputs are removed first.
    ``overwrite`` runs every item.
    """
    pending = []
    for item in items:
        outputs = outputs_of(item.stem)
        for path in outputs:
            remove_stale_temps(path)
        if not overwrite and all(path.is_file() for path in outputs):
            report.skipped.append(item.source)
        else:
            pending.append((item, outputs))
    return pending


def record(report: Report, listener: Listener, source: Path, reason: Optional[str]) -> None:
    """Record one finished item: done (``reason`` None) or failed with ``reason``."""
    if reason is None:
        report.done.append(source)
        listener.item_finished(source, "done")
    else:
        report.failed.append((source, reason))
        listener.item_finished(source, "failed", reason)


def attempt(task: Task, source: Path, work: Callable[[], Optional[Callable[[], None]]]) -> Optional[str]:
    """Run ``work`` for ``source``, and the writing it hands back (`Task.process`) right after it; None on
    success, else the failure reason. Job-stopping errors are raised."""
    try:
        writing = work()
        if writing is not None:
            writing()
    except (TfskyError, OSError) as err:
        if task.stops_the_job(err):
            raise
        return failure_reason(err, source)
    return None


def failure_reason(err: TfskyError | OSError, source: Path) -> str:
    """The reason reported for ``source``: an `InputError` about ``source`` itself without its path."""
    if isinstance(err, InputError) and Path(err.path) == source:
        return err.problem
    return str(err)


class LocalEngine:
    """Items one by one in this process; the next item is read in a background thread meanwhile, and the
    writing an item hands back (`Task.process`) runs in a writer thread while the next one is computed.

    The first item is read before `Task.load`, so the decoder's and the model
    loader's memory peaks do not add up. At most ``writers`` items wait for
    their writing (the model waits for a free writer beyond that), and the
    next item is read once the writing started before it is finished: besides
    the item being computed, memory holds either the previous item's outputs
    or the next item, never both (both still overlap the model's work). An
    item is recorded when its writing is finished.

    Args:
        writers: int. Writer threads, and items whose writing may be pending at once. Defaults to 1.
    """

    def __init__(self, writers: int = 1):
        self.writers = writers

    def run(self, task: Task, pending: Pending, report: Report, listener: Listener) -> None:
        with (
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfsky-read") as reader,
            concurrent.futures.ThreadPoolExecutor(self.writers, thread_name_prefix="tfsky-write") as writer,
        ):
            _LocalRun(task, pending, report, listener, reader, writer, self.writers).run()


class _LocalRun:
    """One `LocalEngine.run`: its reader and writer threads, and the items whose writing is pending."""

    def __init__(
        self,
        task: Task,
        pending: Pending,
        report: Report,
        listener: Listener,
        reader: concurrent.futures.Executor,
        writer: concurrent.futures.Executor,
        writers: int,
    ):
        self.task, self.pending, self.report, self.listener = task, pending, report, listener
        self.reader, self.writer, self.writers = reader, writer, writers
        self.writing: collections.deque = collections.deque()  # (source, future of its writing's failure reason)
        self.handed_back: Optional[Callable[[], None]] = None  # the writing `Task.process` returned last

    def run(self) -> None:
        first = self.read(0)
        concurrent.futures.wait([first])
        self.task.load()
        upcoming: Optional[concurrent.futures.Future] = first
        for index, (item, outputs) in enumerate(self.pending):
            current = upcoming
            assert current is not None  # read at the previous step (or before the loop)
            upcoming = self.read(index + 1) if index + 1 < len(self.pending) else None
            self.compute(item, outputs, current)
        while self.writing:
            self.settle_oldest()

    def read(self, index: int) -> concurrent.futures.Future:
        """Read item ``index`` in the reader thread, once the writing pending now is finished."""
        return self.reader.submit(self.decode, self.pending[index][0].source, [future for _, future in self.writing])

    def decode(self, source: Path, after: Sequence[concurrent.futures.Future]) -> Decoded:
        concurrent.futures.wait(after)
        return Decoded(self.task.read(source))

    def compute(self, item: Item, outputs: Iterable[Path], decoded: concurrent.futures.Future) -> None:
        """Process ``item``; record it, or hand the writing it returns to a writer thread (waiting for a free one)."""
        self.handed_back = None
        reason = attempt(self.task, item.source, functools.partial(self.process, item, outputs, decoded))
        if reason is not None or self.handed_back is None:
            record(self.report, self.listener, item.source, reason)
            return
        while len(self.writing) >= self.writers:
            self.settle_oldest()
        self.writing.append((item.source, self.writer.submit(attempt, self.task, item.source, self.handed_back)))

    def process(self, item: Item, outputs: Iterable[Path], decoded: concurrent.futures.Future) -> None:
        """`Task.process` of ``item``; the writing it returns is kept in ``handed_back`` (not run, as `attempt` would)."""
        self.handed_back = self.task.process(item, decoded.result(), outputs, self.listener)

    def settle_oldest(self) -> None:
        source, future = self.writing.popleft()
        record(self.report, self.listener, source, future.result())


def collect_items(inputs: Sequence[Path], out_dir: Path | StorePath) -> tuple[list[Item], list[Failure]]:
    """Expand inputs into items; returns ``(items, failures)`` (unreadable manifests, broken links, name clashes)."""
    items: list[Item] = []
    failures: list[Failure] = []
    owners: dict[Path, Path] = {}
    for item in _expand(inputs, out_dir, failures):
        first = owners.get(item.stem)
        if first is None:
            owners[item.stem] = item.source
            items.append(item)
        elif first != item.source:
            failures.append((item.source, f"writes the same outputs ({item.stem}_*) as {first}"))
    return items, failures


def _expand(inputs: Sequence[Path], out_dir: Path | StorePath, failures: list[Failure]) -> Iterator[Item]:
    for path in map(Path, inputs):
        if path.is_dir():
            yield from _folder_items(path, Path(), out_dir, failures)
        elif path.suffix.lower() == MANIFEST_SUFFIX:
            yield from _manifest_items(path, out_dir, failures)
        else:
            yield from _file_item(path, Path(path.stem), failures)


def _file_item(path: Path, stem: Path, failures: list[Failure]) -> Iterator[Item]:
    """One listed file; a missing or unreadable file fails when it is read, with the reader's reason."""
    problem = link_problem(path)
    if problem:
        failures.append((path, problem))
    else:
        yield Item(path, stem)


def _folder_items(folder: Path, prefix: Path, out_dir: Path | StorePath, failures: list[Failure]) -> Iterator[Item]:
    """Images under ``folder`` (recursive, sorted), skipping hidden names and the output folder.

    Symbolic links that lead nowhere are reported, not skipped silently.
    """
    out_dir = out_dir.resolve()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not is_image_file(path) or any(part.startswith(".") for part in relative.parts):
            continue
        problem = link_problem(path)
        if problem:
            failures.append((path, problem))
        elif path.is_file() and out_dir not in path.resolve().parents:
            yield Item(path, prefix / relative.with_suffix(""))


def _manifest_items(manifest: Path, out_dir: Path | StorePath, failures: list[Failure]) -> Iterator[Item]:
    """The files and folders listed in ``manifest``; relative lines keep their sub-folders in the output."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        failures.append((manifest, f"cannot read manifest ({err.strerror if isinstance(err, OSError) else err})"))
        return
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        relative = Path(entry)
        path = manifest.parent / relative
        prefix = relative if not relative.is_absolute() and ".." not in relative.parts else Path(relative.name)
        if path.is_dir():
            yield from _folder_items(path, prefix, out_dir, failures)
        else:
            yield from _file_item(path, prefix.with_suffix(""), failures)
