"""Atomic writes: the destination is either absent, the old version, or complete."""

from __future__ import annotations

import pytest

from tfsky.io.atomic import atomic_dir, atomic_path, write_json


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_temp_keeps_suffix_and_replaces(tmp_path):
    target = tmp_path / "a.png"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_text("new")
    assert target.read_text() == "new"
    write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").read_text().startswith("{")


def test_atomic_dir(tmp_path):
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "v1") as tmp:
            (tmp / "file").write_text("x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "v1") as tmp:
        (tmp / "file").write_text("x")
    assert (tmp_path / "v1" / "file").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_outputs_get_ordinary_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d") as tmp:
            pass
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_a_destination_that_cannot_be_a_folder_is_one_input_error(tmp_path):
    from tfsky.errors import InputError
    from tfsky.io.atomic import atomic_dir, write_bytes

    (tmp_path / "plain").write_text("a file")
    with pytest.raises(InputError, match=r"plain/sub: cannot write to the output folder \(Not a directory"):
        write_bytes(tmp_path / "plain" / "sub" / "x.bin", b"x")
    with pytest.raises(InputError, match="cannot write to the output folder"):
        with atomic_dir(tmp_path / "plain" / "version"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
