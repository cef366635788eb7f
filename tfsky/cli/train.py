"""``tfsky train ...``: fit a model into a run folder (``runs/<name>/<timestamp>/``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from tfsky.cli.messages import ProgressBar, is_quiet
from tfsky.cli.options import ConfigOption, QuietOption, SetOption, training_config

if TYPE_CHECKING:
    from tfsky.models.precision import Precision

app = typer.Typer(help="Train segmenters and weather translators.", no_args_is_help=True)

ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue the newest run of this config's name from its last completed epoch.")
]


@app.command()
def segmenter(
    config: ConfigOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train the sky segmenter (preparing data.cache first if missing); print the run folder and best metrics."""
    from tfsky.train.config import SegmenterConfig
    from tfsky.train.segmenter import train_segmenter

    quiet = is_quiet(quiet)  # tfsky --quiet train ...: no Keras bars either
    cfg = training_config(SegmenterConfig, config, overrides)
    announce_precision(cfg.model.precision, quiet)
    with ProgressBar(quiet=quiet) as progress:  # preparing data.cache when it is missing
        result = train_segmenter(cfg, resume=resume, verbose=0 if quiet else 2, progress=progress)
    print_result(result)


@app.command()
def translator(
    config: ConfigOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train a pix2pix or VAE weather translator (builds pairs.file from the streams first if missing)."""
    from tfsky.train.config import TranslatorConfig
    from tfsky.train.translator import train_translator

    quiet = is_quiet(quiet)
    cfg = training_config(TranslatorConfig, config, overrides)
    announce_precision(cfg.model.precision, quiet)
    print_result(train_translator(cfg, resume=resume, verbose=0 if quiet else 2))


@app.command()
def classifier(
    config: ConfigOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train the weather classifier on labelled photos (class folders, labels CSVs); split by source."""
    from tfsky.train.classifier import train_classifier
    from tfsky.train.config import ClassifierConfig

    quiet = is_quiet(quiet)
    cfg = training_config(ClassifierConfig, config, overrides)
    print_result(train_classifier(cfg, resume=resume, verbose=0 if quiet else 2))


def announce_precision(precision: Precision, quiet: bool) -> None:
    """Say which Keras dtype policy the run uses (``auto`` depends on the GPU and the CPU's bfloat16 unit)."""
    from tfsky.models.precision import resolve_precision

    if not quiet:
        Console().print(f"precision: {precision} -> {resolve_precision(precision)}")


def print_result(result) -> None:
    """The run folder, how training ended and the best epoch's validation metrics."""
    console = Console()
    ended = "stopped early" if result.stopped_early else "finished"
    console.print(f"run: {result.run_dir}  ({result.epochs_completed} epochs, {ended})", soft_wrap=True)
    if result.best_epoch is None:
        return
    table = Table(title=f"best epoch {result.best_epoch}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.best_metrics.items():
        if key.startswith("val_"):
            table.add_row(key, f"{value:.4f}")
    console.print(table)
