"""Typed errors for problems a user can fix.

The library raises these; only the CLI turns them into one line on stderr and
a non-zero exit code. Anything else that escapes is a bug and keeps its
traceback.
"""

from __future__ import annotations

from pathlib import PurePath


class TfskyError(Exception):
    """A user-facing error whose message is one self-explanatory line."""


class InputError(TfskyError):
    """A file that cannot be used: missing, truncated, not an image, wrong size...

    Args:
        path: the offending file (a `Path`, or a `tfsky.io.stores.StorePath` object).
        problem: what is wrong with it, phrased for the user.
    """

    def __init__(self, path: str | PurePath, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(TfskyError):
    """A configuration value that is unknown, mistyped or out of range.

    Args:
        key: dotted config key, e.g. ``data.patch_size``.
        problem: what is wrong with the value.
    """

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


class ServingError(Exception):
    """A request the serving side refuses, with the gRPC status code TF Serving uses for it.

    Raised by the development server's repository and handlers, which turn it into that status
    (not a `TfskyError`: it is answered to the client, never printed by the CLI).

    Args:
        code: grpc.StatusCode. e.g. ``NOT_FOUND``, ``INVALID_ARGUMENT``.
        message: str. The error message sent back.
    """

    def __init__(self, code, message: str):
        self.code = code
        super().__init__(message)


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type name when empty): libraries' errors in one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
