"""The command's own conveniences: ``--version``, ``python -m tfsky``, shell completion, ``tfsky doctor``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tfsky
from tfsky.cli import doctor

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args: str) -> subprocess.CompletedProcess:
    """``python -m tfsky ARGS`` in a fresh process, importing this source tree."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "tfsky", *args], capture_output=True, text=True, env=env, timeout=300)


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.output == f"tfsky {tfsky.__version__}\n"


def test_python_m_tfsky_is_the_tfsky_command():
    version = run_module("--version")
    assert (version.returncode, version.stdout, version.stderr) == (0, f"tfsky {tfsky.__version__}\n", "")
    usage = run_module("--help")
    assert usage.returncode == 0
    assert "Usage: tfsky " in usage.stdout and "doctor" in usage.stdout


@pytest.mark.parametrize("args", [["--version"], ["predict", "--help"]])
def test_version_and_help_answer_without_importing_tensorflow(args):
    """``--version``, ``--help`` and every Tab press of shell completion must not pay TensorFlow's seconds of import."""
    code = (
        f"import sys; sys.argv = ['tfsky', *{args!r}]\n"
        "from tfsky.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.splitlines()[-1] == "False"
    expected = "Usage: tfsky predict" if "--help" in args else f"tfsky {tfsky.__version__}"
    assert expected in result.stdout


def test_shell_completion_is_offered(cli):
    output = cli("--help").output
    assert "--install-completion" in output and "--show-completion" in output


def test_doctor_reports_versions_devices_precision_and_cache(cli, tmp_path, monkeypatch):
    from tfsky.models.precision import resolve_precision

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "resnet34_imagenet_1000_no_top.h5").write_bytes(b"")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    result = cli("doctor")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"tfsky: {tfsky.__version__}"
    assert f"python: {sys.version.split()[0]} ({sys.executable})" in lines
    assert any(line.startswith("  tensorflow: 2.") for line in lines)
    assert next(line for line in lines if line.startswith("devices: ")).count("CPU:0") == 1
    assert f"precision auto: {resolve_precision('auto')}" in lines
    assert f"keras cache: {tmp_path} (1 file(s) in models/: resnet34_imagenet_1000_no_top.h5)" in lines
    assert any(line.startswith("chromium: ") for line in lines)


def test_doctor_says_how_to_install_a_missing_extra(monkeypatch):
    monkeypatch.setattr(doctor, "requirement_names", lambda extra=None: ["tensorboard"] if extra else [])
    monkeypatch.setattr(doctor, "installed_version", lambda name: "not installed")
    assert doctor.extra_state("tensorboard") == "not installed (pip install 'tfsky[tensorboard]')"
    monkeypatch.setattr(doctor, "installed_version", lambda name: "2.21.0")
    assert doctor.extra_state("tensorboard") == "tensorboard 2.21.0"
