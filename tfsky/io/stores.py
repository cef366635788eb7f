"""Output folders in an object store: ``--out s3://bucket/prefix`` instead of a local folder.

A `StorePath` is a pure path whose first part is the scheme (``s3:``) and the
second the bucket, so the job runner and the output namers build object
names with the same ``/``, ``.name`` and ``.with_suffix`` as for local files.
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

import functools
import os
import shutil
from pathlib import Path, PurePosixPath

from tfsky.errors import InputError, TfskyError, first_line

SCHEMES = ("s3",)
_COPY_CHUNK = 8 * 2**20
INSTALL_HINT = "pip install -e '.[s3]' (or pip install 'pyarrow==26.0.1')"


class StorePath(PurePosixPath):
    """``s3://bucket/key``: an object in a store, with the two `pathlib.Path` queries the job runner makes.

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

    def _info(self):
        try:
            return filesystem(self).get_file_info(f"{self.bucket}/{self.key}")
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
        with open(local, "rb") as source, filesystem(target).open_output_stream(f"{target.bucket}/{target.key}") as sink:
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
        with filesystem(folder).open_output_stream(f"{probe.bucket}/{probe.key}") as sink:
            sink.write(b"")
    except OSError as err:
        raise InputError(folder, f"cannot write to the output folder ({first_line(err)})") from None
    try:
        filesystem(folder).delete_file(f"{probe.bucket}/{probe.key}")
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

