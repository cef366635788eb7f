"""Write files and folders so that a killed process never leaves half of one.

Everything tfsky writes goes to a temporary name in the destination folder and
is renamed into place once complete; `os.replace` is atomic on POSIX within
one filesystem. An output in an object store (`tfsky.io.stores.StorePath`,
``s3://...``) is written to a local temporary file and then stored in one
upload, which the store shows only once complete.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from tfsky.errors import InputError
from tfsky.io.stores import StorePath, check_writable, as_path, put


def temp_name(path: Path) -> Path:
    """A unique hidden sibling of ``path`` that keeps its suffix (writers pick the format from it)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # full disk, quota, file-size limit (RLIMIT_FSIZE)


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, mode: int) -> None:
    """Give a temp file/folder the permissions a plain ``open``/``mkdir`` would (mkstemp makes them private)."""
    os.chmod(tmp, mode & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | Path | StorePath) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it to ``path`` on success, delete it on failure.

    For an object ``path`` the temporary file is local and is stored as ``path`` on success. Running out
    of space (`OUT_OF_SPACE`) while writing is the user's to fix: an `InputError` naming ``path``.
    """
    path = as_path(path)
    if isinstance(path, StorePath):
        with _local_temp(path.suffix) as tmp:
            yield tmp
            put(tmp, path)
        return
    with _as_path_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(path)
    try:
        yield tmp
        _publish(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in OUT_OF_SPACE:
            raise InputError(path, os.strerror(err.errno).lower()) from None
        raise


@contextlib.contextmanager
def _local_temp(suffix: str) -> Iterator[Path]:
    """A temporary file in the system's temp folder (keeping ``suffix``), always deleted afterwards."""
    fd, name = tempfile.mkstemp(prefix=".tfsky-upload.", suffix=f".part{suffix}")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        os.unlink(name)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` when the block completes.

    An existing ``path`` is replaced. A folder that is renamed into place is
    complete, which matters to readers that watch for new folders (TF Serving).
    """
    path = Path(path)
    with _as_path_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        _publish(tmp, 0o777)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare_out_dir(out_dir: Path | StorePath) -> None:
    """Create ``out_dir`` and check once that a file can be written in it (not output by output later).

    Raises:
        InputError: ``out_dir`` is a file, cannot be created or is not writable.
    """
    if isinstance(out_dir, StorePath):
        check_writable(out_dir)
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "is a file, not an output folder")
    with _as_path_errors(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tfsky-write-check.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)


@contextlib.contextmanager
def _as_path_errors(folder: Path) -> Iterator[None]:
    """A destination folder that cannot be created or written in is the user's to fix: one `InputError`.

    (Inside a file, read-only, full disk...) Every command that writes reports it the same way.
    """
    try:
        yield
    except OSError as err:
        in_the_way = err.filename and folder != Path(err.filename) and folder not in Path(err.filename).parents
        where = f": {err.filename}" if in_the_way else ""  # e.g. a file where a parent folder should be
        raise InputError(folder, f"cannot write to the output folder ({err.strerror}{where})") from None


def stale_temps(path: str | Path | StorePath) -> list[Path]:
    """Temporaries that interrupted atomic writes of ``path`` left beside it (files and folders).

    None for an object: its temporaries are local, and an unfinished upload shows no object.
    """
    path = as_path(path)
    if isinstance(path, StorePath):
        return []
    patterns = (f".{path.stem}.*.part{path.suffix}", f".{path.name}.*.part")
    return sorted({stale for pattern in patterns for stale in path.parent.glob(pattern)})


def remove_stale_temps(path: str | Path | StorePath) -> None:
    """Delete what `stale_temps` finds; a re-run calls this before it writes ``path`` again."""
    for stale in stale_temps(path):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def write_bytes(path: str | Path | StorePath, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path | StorePath, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
