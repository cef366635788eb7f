"""Output folders in an object store: ``--out s3://bucket/prefix`` instead of a local folder.

A `StorePath` is a pure path whose first part is the scheme (``s3:``) and the
second the bucket, so the job runner and the output namers build object
names with the same ``/``, ``.name`` and ``.with_suffix`` as for local files,
and a job's summary files (the cloud-cover series, the classification table)
are built from the sidecars in the store with the same ``rglob`` and
``read_text`` as from a local folder (`tfsky.predict.outputs.job_sidecars`).
`tfsky.io.atomic.atomic_path` writes each such file to a local temporary file
and then stores it with `put`: an object appears whole or not at all (one
PUT below Arrow's 10 MB part size, a multipart upload above, which S3 also
shows only once it completes), so there are no stale temporaries in the store and
"complete" means "the objects exist" (`StorePath.is_file`).

The store is reached with Apache Arrow's filesystem layer (``pyarrow.fs``,
which ships with ``ray[data]``) and the usual AWS settings of the process:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or ``~/.aws`` or an instance
role, ``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL`` for an S3-compatible
server (MinIO, Ceph, ...). Ray workers write straight to the store, so every
node needs those settings too.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Iterator

from tfsky.errors import InputError, TfskyError, first_line

SCHEMES = ("s3",)
_COPY_CHUNK = 8 * 2**20
INSTALL_HINT = "pip install -e '.[s3]' (or pip install 'pyarrow==26.0.1')"


class StorePath(PurePosixPath):
    """``s3://bucket/key``: an object in a store, with the `pathlib.Path` queries and reads tfsky's jobs make.

    Pure-path arithmetic keeps the class (``out / "sub" / "a_mask.png"``, ``.parent``, ``.with_suffix``),
    and it pickles, so Ray workers get the same output names.
    """

    def __str__(self) -> str:
        scheme, *key = self.parts
        return f"{scheme}//{'/'.join(key)}"

    @property
    def bucket(self) -> str:
        return self.parts[1]

    @property
    def key(self) -> str:
        """The object name inside the bucket (empty for the bucket itself)."""
        return "/".join(self.parts[2:])

    def is_file(self) -> bool:
        """True if the object exists."""
        from pyarrow.fs import FileType

        return self._info().type == FileType.File

    def resolve(self) -> "StorePath":
        """Itself: an object name has no links to follow (the runner resolves the output folder)."""
        return self

    def rglob(self, pattern: str) -> Iterator["StorePath"]:
        """The objects at any depth under this prefix whose name matches ``pattern`` (as `Path.rglob`).

        Raises:
            InputError: the store cannot be listed.
        """
        from pyarrow.fs import FileSelector, FileType

        below = FileSelector(self.location, recursive=True, allow_not_found=True)
        try:
            listing = filesystem(self).get_file_info(below)
        except OSError as err:
            raise InputError(self, f"cannot list the object store ({first_line(err)})") from None
        for info in listing:
            if info.type == FileType.File and fnmatch.fnmatchcase(info.base_name, pattern):
                yield StorePath(self.parts[0], *info.path.split("/"))

    def read_bytes(self) -> bytes:
        """The object's bytes; an OSError (e.g. FileNotFoundError) if it cannot be read, as `Path.read_bytes`."""
        with filesystem(self).open_input_stream(self.location) as source:
            return source.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        """The object decoded as text (a UnicodeDecodeError for other bytes, as `Path.read_text`)."""
        return self.read_bytes().decode(encoding)

    @property
    def location(self) -> str:
        """``bucket/key``: the name Arrow's file system gives the object."""
        return f"{self.bucket}/{self.key}".rstrip("/")

    def _info(self):
        try:
            return filesystem(self).get_file_info(self.location)
        except OSError as err:
            raise InputError(self, f"cannot reach the object store ({first_line(err)})") from None


def as_path(out: str | Path | StorePath) -> Path | StorePath:
    """A local `Path`, or a `StorePath` for ``s3://bucket[/prefix]`` (e.g. ``--out``).

    Raises:
        InputError: an object-store URI of another scheme, or without a bucket.
    """
    if isinstance(out, (Path, StorePath)):
        return out
    scheme, sep, rest = out.partition("://")
    if not sep or "/" in scheme:
        return Path(out)
    if scheme.lower() not in SCHEMES:
        raise InputError(out, f"unsupported object store {scheme}:// (supported: {', '.join(SCHEMES)}://)")
    if not rest.strip("/"):
        raise InputError(out, "names no bucket (expected s3://bucket/prefix)")
    return StorePath(f"{scheme.lower()}:", *rest.strip("/").split("/"))


def put(local: Path, target: StorePath) -> None:
    """Store the finished local file ``local`` as ``target``: visible whole once the upload completes."""
    try:
        with open(local, "rb") as source, filesystem(target).open_output_stream(target.location) as sink:
            shutil.copyfileobj(source, sink, _COPY_CHUNK)
    except OSError as err:
        if err.filename:  # the local temporary file, not the store
            raise
        raise InputError(target, f"cannot write to the object store ({first_line(err)})") from None


def check_writable(folder: StorePath) -> None:
    """Store and delete a probe object under ``folder`` once, before any work (a missing bucket, no rights).

    Raises:
        InputError: the bucket cannot be reached or written, or ``folder`` is an object.
    """
    if folder.key and folder.is_file():
        raise InputError(folder, "is an object, not an output folder")
    probe = folder / f".tfsky-write-check.{os.getpid()}"
    try:
        with filesystem(folder).open_output_stream(probe.location) as sink:
            sink.write(b"")
    except OSError as err:
        raise InputError(folder, f"cannot write to the output folder ({first_line(err)})") from None
    try:
        filesystem(folder).delete_file(probe.location)
    except OSError:
        pass  # a put-only role may not delete: the empty probe stays, hidden by its leading dot
    # (Arrow then keeps ``folder/`` as an empty folder marker, as S3 consoles make for a new folder)


def filesystem(path: StorePath):
    """The `pyarrow.fs.S3FileSystem` of ``path``'s bucket for this process (one per bucket and endpoint).

    ``allow_delayed_open`` makes Arrow send an object below its part size in one PUT.
    """
    return _filesystem(path.bucket, os.environ.get("AWS_ENDPOINT_URL", ""))


@functools.cache
def _filesystem(bucket: str, endpoint: str):
    try:
        from pyarrow import fs
    except ImportError:
        raise TfskyError(f"--out s3://: pyarrow is not installed; install it with {INSTALL_HINT}") from None
    try:
        store, _ = fs.FileSystem.from_uri(f"s3://{bucket}?allow_delayed_open=true")
    except OSError as err:
        raise InputError(f"s3://{bucket}", f"cannot reach the object store ({first_line(err)})") from None
    return store
