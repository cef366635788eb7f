"""Shared fixtures: the real sample data beside the repository, and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tfsky  # noqa: F401  (switches Keras 2 mode before any test imports TensorFlow)

SHARED_DATA = Path(os.environ.get("TFSKY_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set TFSKY_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def cli():
    """Run ``tfsky`` in-process: ``result = cli("data", "inspect", path)``."""
    from typer.testing import CliRunner

    from tfsky.cli.main import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run
