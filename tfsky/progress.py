"""How the library reports what it is doing: progress through one `Progress` listener, messages through logging.

The library never draws a bar nor prints: a long operation (preparing a cache, evaluating a model, a
batch job) takes a ``progress`` listener and calls

* `Progress.started` once with the number of items (None when it is not known in advance),
* `Progress.advanced` after each item, with a short name of the item,
* `Progress.finished` once at the end (also after an error),

and messages (what ``tile: auto`` chose, a skipped file, the budget projection of a training) go to the
``tfsky`` logger (`logger`). The command line renders both (`tfsky.cli.messages`): a rich bar per
listener and a stderr handler on the ``tfsky`` logger; ``--quiet`` silences both. A library user sees
nothing unless they pass a listener or configure logging.

`Once` logs a message once per owner: the object that makes a choice (a tiled model choosing its tiles)
holds one, so a long-lived process (a Ray worker, a server) keeps no global record of what was said.

This module is at the bottom of the layers: it imports nothing of tfsky, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional

LOGGER = "tfsky"


def logger(name: str = "") -> logging.Logger:
    """The ``tfsky`` logger, or its child ``tfsky.<name>``: where every library message goes."""
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)


class Progress:
    """Progress hooks of a long operation over items; this base class ignores them all (the no-op default).

    Subclass it and override what you need; `NO_PROGRESS` is the shared do-nothing instance.
    """

    def started(self, total: Optional[int], what: str = "") -> None:
        """The operation starts over ``total`` items (None: not known), described by ``what`` (e.g. ``evaluate``)."""

    def advanced(self, item: str = "") -> None:
        """One more item (named ``item``) is done."""

    def finished(self) -> None:
        """The operation ended (after the last item, or on an error)."""


NO_PROGRESS = Progress()


@contextlib.contextmanager
def tracked(progress: Optional[Progress], total: Optional[int], what: str = "") -> Iterator[Progress]:
    """``progress`` (None: `NO_PROGRESS`) started over ``total`` items, finished when the block ends."""
    progress = progress or NO_PROGRESS
    progress.started(total, what)
    try:
        yield progress
    finally:
        progress.finished()


class Once:
    """Logs each distinct message once, at INFO, on ``log``; owned by the object that makes the choice it tells."""

    def __init__(self, log: Optional[logging.Logger] = None):
        self.log = log or logger()
        self.said: set[str] = set()

    def __call__(self, message: Optional[str]) -> None:
        """Log ``message`` unless it is None or was already logged by this instance."""
        if message is not None and message not in self.said:
            self.said.add(message)
            self.log.info("%s", message)
