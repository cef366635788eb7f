"""``tfsky doctor``: what this installation is and can do, the first thing to paste into a bug report."""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata

import typer

OPTIONAL_EXTRAS = ("ray", "s3", "tensorboard")  # the user-facing extras; dev is for working on tfsky itself


def doctor_cli() -> None:
    """Print versions, devices, the precision `auto` picks, optional tools and the Keras cache folder."""
    for line in report_lines():
        typer.echo(line)


def report_lines() -> list[str]:
    """The report, one ``name: value`` line per fact (packages indented under ``packages:``)."""
    import tensorflow as tf

    from tfsky import __version__
    from tfsky.models.precision import resolve_precision
    from tfsky.models.segmenter import keras_cache_dir
    from tfsky.review.browser import missing_browser

    cache = keras_cache_dir()
    cached = sorted(path.name for path in (cache / "models").glob("*")) if (cache / "models").is_dir() else []
    lines = [
        f"tfsky: {__version__}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"platform: {platform.platform()}",
        "packages:",
        *(f"  {name}: {installed_version(name)}" for name in requirement_names()),
        "extras:",
        *(f"  {extra}: {extra_state(extra)}" for extra in OPTIONAL_EXTRAS),
        f"devices: {', '.join(device_names(tf)) or 'none'}",
        f"precision auto: {resolve_precision('auto')}",
        f"chromium: {missing_browser() or 'found (drives the review page in tests and scripts/bench_review.py)'}",
        f"keras cache: {cache} ({len(cached)} file(s) in models/{': ' + ', '.join(cached) if cached else ''})",
    ]
    return lines


def requirement_names(extra: str | None = None) -> list[str]:
    """The packages tfsky requires (``extra=None``) or that ``extra`` adds, as the installed metadata states."""
    try:
        requirements = metadata.requires("tfsky") or []
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
        requirements = []
    names = []
    for text in requirements:
        name, _, marker = text.partition(";")
        match = re.match(r"[A-Za-z0-9._-]+", name.strip())
        if match is None:  # not a requirement (metadata.requires gives only requirements)
            continue
        name = match.group(0)
        belongs = f'extra == "{extra}"' in marker if extra else not marker
        if belongs and name not in names:
            names.append(name)
    return names


def installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def extra_state(extra: str) -> str:
    """``ray 2.60.0`` when every package of ``extra`` is installed, else how to install it."""
    versions = {name: installed_version(name) for name in requirement_names(extra)}
    if versions and "not installed" not in versions.values():
        return ", ".join(f"{name} {version}" for name, version in versions.items())
    return f"not installed (pip install 'tfsky[{extra}]')"


def device_names(tf) -> list[str]:
    """``CPU:0``, ``GPU:0 (NVIDIA ...)``: each physical device TensorFlow sees, with the GPU's name."""
    names = []
    for device in tf.config.list_physical_devices():
        short = device.name.removeprefix("/physical_device:")
        detail = (
            tf.config.experimental.get_device_details(device).get("device_name")
            if device.device_type == "GPU"
            else None
        )
        names.append(f"{short} ({detail})" if detail else short)
    return names
