"""Issue 17: outputs are written off the model's critical path (`tfsky.batch.LocalEngine`'s bounded writer
thread), failures of a background write are reported per item, and a kill -9 during a background write
leaves no half file: the re-run redoes that image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_jobs import CopyTask, Recorder, complete_sidecars, files
from test_predict import ldr_image, outputs_of, tiny_segmenter, visible_files
from tfsky.errors import InputError
from tfsky.io.atomic import write_bytes, write_json
from tfsky.io.images import read_image
from tfsky.io.writers import write_png
from tfsky.batch import Decoded, Item, Listener, attempt, run_job


class SlowWriteTask(CopyTask):
    """`CopyTask` whose writing is handed back to the runner and takes ``seconds``; logs when things happen."""

    def __init__(self, seconds: float = 0.3):
        super().__init__()
        self.seconds = seconds
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def note(self, event: str, name: str) -> None:
        with self.lock:
            self.log.append((event, name))

    def read(self, source: Path) -> bytes:
        self.note("read", source.name)
        return super().read(source)

    def process(self, item: Item, decoded: Decoded, outputs: list[Path], listener: Listener):
        data = decoded.take()
        self.note("process", item.source.name)
        if data == b"bad":  # fails before any writing is handed back
            raise InputError(item.source, "bad content")

        def write() -> None:
            self.note("write start", item.source.name)
            time.sleep(self.seconds)
            if data == b"unwritable":
                raise InputError(outputs[0], "disk full")
            write_bytes(outputs[0], data)
            write_json(outputs[1], {"source": str(item.source)})
            self.note("write end", item.source.name)

        return write


def test_the_model_goes_on_while_the_previous_item_is_written_and_at_most_one_write_waits(tmp_path):
    task = SlowWriteTask()
    inputs = files(tmp_path / "in", a_bin=b"1", b_bin=b"2", c_bin=b"3")
    report = run_job(task, inputs, tmp_path / "out")
    assert report.summary() == "done 3, skipped 0, failed 0"
    log = task.log
    assert log.index(("process", "b.bin")) < log.index(("write end", "a.bin"))  # b computed while a is written
    assert log.index(("write end", "a.bin")) < log.index(("process", "c.bin"))  # bounded: c waits for a's writer
    assert all((tmp_path / "out" / f"{n}.json").is_file() for n in "abc")


def test_the_next_item_is_read_after_the_write_in_flight_so_their_memory_never_adds_up(tmp_path):
    task = SlowWriteTask()
    inputs = files(tmp_path / "in", a_bin=b"1", b_bin=b"2", c_bin=b"3", d_bin=b"4")
    assert run_job(task, inputs, tmp_path / "out").summary() == "done 4, skipped 0, failed 0"
    log = task.log
    assert log.index(("write end", "a.bin")) < log.index(("read", "c.bin"))  # c waits for a's outputs to go
    assert log.index(("write end", "b.bin")) < log.index(("read", "d.bin"))
    assert log.index(("process", "c.bin")) < log.index(("write end", "b.bin"))  # still overlapping the model


def test_a_failed_background_write_fails_its_item_only(tmp_path):
    task, listener = SlowWriteTask(0.05), Recorder()
    inputs = files(tmp_path / "in", a_bin=b"1", b_bin=b"unwritable", c_bin=b"3", d_bin=b"bad")
    report = run_job(task, inputs, tmp_path / "out", listener=listener)
    assert report.summary() == "done 2, skipped 0, failed 2"
    assert sorted((p.name, r) for p, r in report.failed) == [
        ("b.bin", f"{tmp_path / 'out' / 'b.out'}: disk full"),
        ("d.bin", "bad content"),
    ]
    assert sorted(c for c in listener.calls if c[0] != "begin") == [
        ("a.bin", "done", ""),
        ("b.bin", "failed", f"{tmp_path / 'out' / 'b.out'}: disk full"),
        ("c.bin", "done", ""),
        ("d.bin", "failed", "bad content"),
    ]
    assert not (tmp_path / "out" / "b.json").exists()


def test_other_engines_write_right_away_through_attempt(tmp_path):
    task = SlowWriteTask(0)
    [source] = files(tmp_path / "in", a_bin=b"1")
    outputs = task.outputs(tmp_path / "out" / "a")
    assert (
        attempt(task, source, lambda: task.process(Item(source, Path("a")), Decoded(b"1"), outputs, Listener())) is None
    )
    assert [event for event, _ in task.log] == ["process", "write start", "write end"] and outputs[1].is_file()


def test_kill_9_during_a_background_write_leaves_no_half_file_and_the_rerun_redoes_that_image(tmp_path):
    model = tiny_segmenter(tmp_path / "m.keras")
    inputs = tmp_path / "in"
    for index in range(8):
        write_png(inputs / f"frame{index}.png", ldr_image(index, size=(960, 1280)))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "tfsky.cli.main",
        "predict",
        "-m",
        str(model),
        str(inputs),
        "-o",
        str(out),
        "--tile",
        "128",
        "--tta",
        "flip4",
        "-q",
    ]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, writing = time.monotonic() + 240, []
    while job.poll() is None and time.monotonic() < deadline:  # the pipeline runs: one image is complete and
        if complete_sidecars(out):  # a later one is being written in the background
            writing = [p.name for p in out.glob(".*.part*")]
            if writing:
                break
        time.sleep(0.001)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL and writing, "the job finished before a background write was caught"
    finished = complete_sidecars(out)
    assert 1 <= len(finished) < 8
    for path in out.iterdir():  # every visible file is complete; the interrupted write is a hidden temporary
        if not path.name.startswith("."):
            assert path.suffix == ".json" or read_image(path, channels=None).shape[:2] == (960, 1280)
    assert any(p.name.startswith(".") for p in out.iterdir())
    rerun = subprocess.run(command[:-1], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"done {8 - len(finished)}, skipped {len(finished)}, failed 0" in rerun.stdout
    assert visible_files(out) == {p.name for i in range(8) for p in outputs_of(out, f"frame{i}")}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_the_writer_draws_the_overlay_into_the_image_it_owns_and_copies_any_other():
    import numpy as np

    from tfsky.predict.outputs import overlay

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    mask = np.where(rng.random((70, 90)) > 0.5, 255, 0).astype(np.uint8)
    expected = overlay(image.copy(), mask)
    drawn = overlay(image, mask, in_place=True)
    assert drawn is image and np.array_equal(drawn, expected)  # one 8K-sized buffer less in the writer
    frozen = image.copy()
    frozen.flags.writeable = False  # e.g. an image from Ray's object store
    assert overlay(frozen, mask, in_place=True) is not frozen
    grey = rng.integers(0, 256, (70, 90, 1), dtype=np.uint8)
    assert overlay(grey, mask, in_place=True).shape == (70, 90, 3)


def test_an_8_bit_photo_is_tinted_by_lookup_bit_for_bit_as_the_float_blend():
    import numpy as np

    from tfsky.predict.outputs import OVERLAY_COLOUR, OVERLAY_OPACITY, overlay

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    mask = np.where(rng.random((300, 500)) > 0.5, 255, 0).astype(np.uint8)
    mask[200:230] = rng.integers(0, 256, (30, 500))  # soft values in a few rows: those rows are blended
    alpha = mask[..., None] * np.float32(OVERLAY_OPACITY / 255)
    blend = np.rint(255 * (image / np.float32(255) * (1 - alpha) + OVERLAY_COLOUR * alpha)).astype(np.uint8)
    assert np.array_equal(overlay(image, mask), blend)
    assert np.array_equal(overlay(image.copy(), mask, in_place=True), blend)
    assert not np.array_equal(blend[mask == 255], image[mask == 255])  # the tint is there
