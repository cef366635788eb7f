"""The job runner (`tfsky.batch`): skip-complete, stale temporaries, failure capture, the summary and exit code,
the output folder checked once, broken links reported, and resume after a real kill -9 of ``tfsky predict``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_predict import ldr_image, outputs_of, tiny_segmenter, visible_files
from tfsky.errors import InputError, TfskyError
from tfsky.io.atomic import temp_name, write_bytes, write_json
from tfsky.io.images import read_image
from tfsky.io.writers import write_png
from tfsky.models.precision import BF16_OVERRIDE
from tfsky.batch import Decoded, Item, Listener, Report, Task, collect_items, run_job


class CopyTask(Task):
    """Copies each input to ``<stem>.out`` and then writes ``<stem>.json``; content ``bad`` is an `InputError`."""

    def __init__(self, stop_on: bytes = b""):
        self.processed: list[Path] = []
        self.events: list[str] = []
        self.stop_on = stop_on

    def outputs(self, stem: Path) -> list[Path]:
        return [stem.parent / f"{stem.name}.out", stem.parent / f"{stem.name}.json"]

    def read(self, source: Path) -> bytes:
        self.events.append(f"read {source.name}")
        return source.read_bytes()

    def load(self) -> None:
        self.events.append("load")

    def process(self, item: Item, decoded: Decoded, outputs: list[Path], listener: Listener) -> None:
        data = decoded.take()
        self.processed.append(item.source)
        if data == b"bad":
            raise InputError(item.source, "bad content")
        if self.stop_on and data == self.stop_on:
            raise ConnectionStop(f"server down at {item.source.name}")
        write_bytes(outputs[0], data)
        write_json(outputs[1], {"source": str(item.source)})

    def stops_the_job(self, err: Exception) -> bool:
        return isinstance(err, ConnectionStop)


class ConnectionStop(TfskyError):
    """An error that would fail every item alike."""


class Recorder(Listener):
    def __init__(self):
        self.calls: list[tuple] = []

    def begin(self, items: int) -> None:
        self.calls.append(("begin", items))

    def item_finished(self, source: Path, status: str, reason: str = "") -> None:
        self.calls.append((source.name, status, reason))


def files(folder: Path, **contents: bytes) -> list[Path]:
    """Write ``name=content`` files (``_`` in a name becomes ``.``) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in contents.items():
        path = folder / name.replace("_", ".")
        path.write_bytes(content)
        paths.append(path)
    return paths


def test_failures_are_captured_with_their_reason_and_the_job_goes_on(tmp_path):
    good, bad, later = files(tmp_path / "in", a_png=b"A", bad_png=b"bad", c_png=b"C")
    missing = tmp_path / "in" / "missing.png"
    listener = Recorder()
    report = run_job(CopyTask(), [good, bad, missing, later], tmp_path / "out", listener=listener)
    assert report.done == [good, later]
    assert report.failed == [(bad, "bad content"), (missing, f"[Errno 2] No such file or directory: '{missing}'")]
    assert report.summary() == "done 2, skipped 0, failed 2" and report.exit_code == 1
    assert listener.calls == [
        ("begin", 4),
        ("a.png", "done", ""),
        ("bad.png", "failed", "bad content"),
        ("missing.png", "failed", report.failed[1][1]),
        ("c.png", "done", ""),
    ]
    assert visible_files(tmp_path / "out") == {"a.out", "a.json", "c.out", "c.json"}
    assert Report(done=[good]).exit_code == 0


def test_complete_items_are_skipped_incomplete_ones_redone_and_stale_temps_removed(tmp_path):
    inputs = files(tmp_path / "in", a_png=b"A", b_png=b"B", c_png=b"C")
    out = tmp_path / "out"
    assert run_job(CopyTask(), inputs, out).summary() == "done 3, skipped 0, failed 0"
    (out / "b.json").unlink()  # killed after b.out, before the sidecar that marks it complete
    stale = [temp_name(out / "b.json"), temp_name(out / "c.out")]
    rerun = CopyTask()
    listener = Recorder()
    report = run_job(rerun, inputs, out, listener=listener)
    assert (report.done, report.skipped) == ([inputs[1]], [inputs[0], inputs[2]])
    assert rerun.processed == [inputs[1]] and rerun.events == ["read b.png", "load"]
    assert listener.calls[:3] == [("begin", 3), ("a.png", "skipped", ""), ("c.png", "skipped", "")]
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.out", "b.json", "b.out", "c.json", "c.out"]
    forced = CopyTask()
    assert run_job(forced, inputs, out, overwrite=True).summary() == "done 3, skipped 0, failed 0"
    assert forced.processed == inputs
    nothing = CopyTask()
    assert run_job(nothing, inputs, out).summary() == "done 0, skipped 3, failed 0"
    assert nothing.events == []  # no model is loaded when nothing is left to do


def test_the_next_item_is_read_before_the_current_one_is_processed_and_the_model_loads_after_the_first_read(tmp_path):
    inputs = files(tmp_path / "in", a_png=b"A", b_png=b"B")

    class Ordered(CopyTask):
        def process(self, item, decoded, outputs, listener):
            time.sleep(0.2)  # the prefetch thread reads b.png meanwhile
            self.events.append(f"process {item.source.name}")
            super().process(item, decoded, outputs, listener)

    task = Ordered()
    run_job(task, inputs, tmp_path / "out")
    assert task.events == ["read a.png", "load", "read b.png", "process a.png", "process b.png"]


def test_an_error_that_would_fail_every_item_stops_the_job(tmp_path):
    inputs = files(tmp_path / "in", a_png=b"A", down_png=b"DOWN", c_png=b"C")
    task = CopyTask(stop_on=b"DOWN")
    with pytest.raises(ConnectionStop, match="server down at down.png"):
        run_job(task, inputs, tmp_path / "out")
    assert task.processed == inputs[:2]


def test_same_outputs_from_two_inputs_fail_the_second_before_any_work(tmp_path):
    (first,) = files(tmp_path / "a", same_png=b"A")
    (second,) = files(tmp_path / "b", same_png=b"B")
    task = CopyTask()
    report = run_job(task, [first, second], tmp_path / "out")
    assert report.failed == [(second, f"writes the same outputs (same_*) as {first}")]
    assert task.processed == [first]


def test_an_output_folder_that_is_a_file_is_one_line_error(cli, tmp_path):
    image = tmp_path / "a.png"
    write_png(image, ldr_image(size=(40, 50)))
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(InputError, match="taken: is a file, not an output folder$"):
        run_job(CopyTask(), [image], tmp_path / "taken")
    model = tiny_segmenter(tmp_path / "m.keras")
    result = cli("predict", "-m", model, image, "-o", tmp_path / "taken")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {tmp_path}/taken: is a file, not an output folder"


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in: read-only by mode, or (as root, who ignores modes) /sys/kernel."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no unwritable folder for root here")
    return Path("/sys/kernel")


def test_an_unwritable_output_folder_is_checked_once_up_front(cli, tmp_path):
    inputs = [tmp_path / f"{name}.png" for name in "abc"]
    for path in inputs:
        write_png(path, ldr_image(size=(40, 50)))
    model = tiny_segmenter(tmp_path / "m.keras")
    out = unwritable_folder(tmp_path)
    result = cli("predict", "-m", model, *inputs, "-o", out)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {out}: cannot write to the output folder (Permission denied)"
    assert result.stdout == ""


def test_broken_symbolic_links_are_reported_not_skipped(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(BF16_OVERRIDE, "0")  # a CPU with a bfloat16 unit also prints what precision auto chose
    folder = tmp_path / "images"
    write_png(folder / "real.png", ldr_image(size=(40, 50)))
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / ".hidden.png").symlink_to(folder / "gone.png")  # hidden names stay ignored
    top_loop = tmp_path / "top.jpg"
    top_loop.symlink_to(top_loop)
    items, failures = collect_items([folder, top_loop], tmp_path / "out")
    assert items == [Item(folder / "real.png", Path("real"))]
    assert failures == [
        (folder / "dangling.png", f"broken symbolic link (its target {folder}/gone.png does not exist)"),
        (folder / "loop.png", "symbolic link loop"),
        (top_loop, "symbolic link loop"),
    ]
    model = tiny_segmenter(tmp_path / "m.keras")
    result = cli("predict", "-m", model, folder, top_loop, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"failed {folder}/dangling.png: broken symbolic link (its target {folder}/gone.png does not exist)",
        f"failed {folder}/loop.png: symbolic link loop",
        f"failed {top_loop}: symbolic link loop",
    ]
    assert result.stdout.strip() == f"done 1, skipped 0, failed 3 -> {tmp_path}/out"


def test_engine_ray_without_ray_installed_is_one_line_error(tmp_path):
    image = tmp_path / "a.png"
    write_png(image, ldr_image(size=(40, 50)))
    model = tiny_segmenter(tmp_path / "m.keras")
    code = (
        "import sys; sys.modules['ray'] = None; from tfsky.cli.main import main; "
        f"sys.argv = ['tfsky', 'predict', '-m', {str(model)!r}, {str(image)!r}, '-o', {str(tmp_path / 'o')!r}, "
        "'--engine', 'ray']; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: --engine ray: Ray Data is not installed; install it with "
        "pip install -e '.[ray]' (or pip install 'ray[data]==2.60.0')"
    )


def complete_sidecars(out: Path) -> list[str]:
    """Stems of the sidecars in ``out`` (not the hidden ``.<stem>.*.part.json`` temporaries of ones being written)."""
    return sorted(p.stem for p in out.glob("*.json") if not p.name.startswith("."))


def kill_9_after_the_first_sidecar(command: list[str], out: Path, env: dict | None = None) -> None:
    """Run ``command`` and kill -9 it as soon as one item in ``out`` is complete (its ``.json`` exists)."""
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    while not complete_sidecars(out) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the job finished before it could be killed"


def test_resume_after_kill_9_does_only_the_missing_images(tmp_path):
    model = tiny_segmenter(tmp_path / "m.keras")
    inputs = tmp_path / "in"
    for index in range(6):
        write_png(inputs / f"frame{index}.png", ldr_image(index, size=(480, 640)))
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
        "--tta",
        "flip4",
        "--tile-batch",
        "2",
        "-q",
    ]  # slow enough per image to be killed mid-job
    kill_9_after_the_first_sidecar(command, out)
    finished = complete_sidecars(out)
    assert 1 <= len(finished) < 6
    for path in out.iterdir():  # every visible file is complete: temporaries are hidden and removed on re-run
        if not path.name.startswith("."):
            assert path.suffix == ".json" or read_image(path, channels=None).shape[:2] == (480, 640)
    rerun = subprocess.run(command[:-1], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"done {6 - len(finished)}, skipped {len(finished)}, failed 0" in rerun.stdout
    assert visible_files(out) == {p.name for i in range(6) for p in outputs_of(out, f"frame{i}")}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
