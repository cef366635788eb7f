"""How the command line renders what the library reports (`tfsky.progress`): its messages and its progress.

* Messages: the library logs to the ``tfsky`` logger; `show_messages` (called once per command by the
  app's callback) gives that logger one handler that writes each INFO or higher line as is on stderr
  (warnings included, as they always were), e.g. what ``tile: auto`` chose or a training's budget line.
* Progress: `ProgressBar` is a `tfsky.progress.Progress` listener drawn as one rich bar on stderr (a
  spinner with a status text until the operation starts). Batch jobs draw theirs with `tfsky.cli.batch_options`.
* ``--quiet`` (before the command, ``tfsky --quiet ...``, or after it where the command has one) silences
  both: the handler drops INFO lines (warnings still show) and no bar is drawn.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress as RichProgress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from tfsky.progress import LOGGER, Progress

_quiet = False  # this command's --quiet: one command per process (or per CliRunner invocation)


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (a rich bar's redirect, a test runner's capture)."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # the base class sets it; the property always answers sys.stderr
        pass


def show_messages(quiet: bool = False) -> None:
    """Show the ``tfsky`` logger's INFO and higher lines on stderr (WARNING and higher when ``quiet``).

    Installs the one handler on first use; later calls (the next command of a test run) only set the level.
    """
    global _quiet
    _quiet = quiet
    log = logging.getLogger(LOGGER)
    handler = next((h for h in log.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)


def silence(quiet: bool) -> bool:
    """Callback of every ``--quiet`` option: with it, messages are silenced too. Returns ``quiet``."""
    if quiet:
        show_messages(quiet=True)
    return quiet


def is_quiet(quiet: bool = False) -> bool:
    """``quiet``, or ``--quiet`` given to this command (before or after its name)."""
    return quiet or _quiet


class ProgressBar(Progress):
    """A `tfsky.progress.Progress` listener drawn as one rich bar on stderr; a context manager.

    With a ``status`` (e.g. ``loading the model...``) a spinner shows it from the start of the block until
    the operation starts; the bar is drawn from `started` to `finished` (an operation may run several in
    turn) and removed when done; ``quiet`` draws nothing.
    """

    def __init__(self, status: str = "", quiet: bool = False):
        self.status = status
        console = Console(stderr=True)
        self.drawn = not is_quiet(quiet) and console.is_terminal  # a log file gets no bar (nor its blank lines)
        self.bar = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[item]}"),
            console=console,
            disable=not self.drawn,
            transient=True,
        )
        self.task = self.bar.add_task(status, total=None, item="")
        self.live = False

    def __enter__(self) -> "ProgressBar":
        if self.status:
            self._show(True)
        return self

    def __exit__(self, *exc) -> None:
        self._show(False)

    def _show(self, live: bool) -> None:
        if self.drawn and live != self.live:
            (self.bar.start if live else self.bar.stop)()
        self.live = live

    def started(self, total: Optional[int], what: str = "") -> None:
        self.bar.reset(self.task, total=total, description=what, item="")
        self._show(True)

    def advanced(self, item: str = "") -> None:
        self.bar.update(self.task, advance=1, item=item)

    def finished(self) -> None:
        self._show(False)
