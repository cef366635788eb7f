"""``tfsky predict``: sky masks for images of any size, one file or whole folders, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tfsky.cli.options import ConfigOption, QuietOption, SetOption, flag_overrides
from tfsky.cli.options import OverlapOption, TileBatchOption, TileOption, TtaOption, WindowOption  # tiling flags

BIG_IMAGE_TILES = 64  # images with more tiles than this get a tile-level progress bar


def predict_cli(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (recursive) or .txt manifests.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Segmenter .keras file (with its .json sidecar).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    tile: TileOption = None,
    overlap: OverlapOption = None,
    window: WindowOption = None,
    tile_batch: TileBatchOption = None,
    tta: TtaOption = None,
    threshold: Annotated[Optional[float], typer.Option(help="Sky probability cut for the mask (default: 0.5).")] = None,
    prob_format: Annotated[Optional[str], typer.Option(help="png16 | tif (default: png16).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs are already complete.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Predict sky mask, probability map, overlay and JSON sidecar per image. Exit 1 if any image failed.

    Options come from the ``predict:`` section of --config, then --set, then the flags above.
    """
    from tfsky.config import load_config
    from tfsky.predict.batch import PredictConfig, predict_many

    flags = {
        "tiling.tile": tile, "tiling.overlap": overlap, "tiling.window": window, "tiling.tile_batch": tile_batch,
        "tiling.tta": tta, "threshold": threshold, "prob_format": prob_format,
    }
    overrides = flag_overrides("predict", flags, set_)
    cfg = load_config(PredictConfig, config, overrides, section="predict")
    errors = Console(stderr=True, highlight=False)
    with _RichListener(errors, quiet) as listener:
        report = predict_many(model, inputs, out, cfg, overwrite=overwrite, listener=listener)
    if not quiet:
        counts = f"done {len(report.done)}, skipped {len(report.skipped)}, failed {len(report.failed)}"
        Console(highlight=False, soft_wrap=True).print(f"{counts} -> {out}", markup=False)
    if report.failed:
        raise typer.Exit(1)


class _RichListener:
    """Progress bars over images (and over tiles of big images); failures printed as one line each."""

    def __init__(self, errors: Console, quiet: bool):
        self.errors = errors
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=errors, disable=quiet, transient=True,
        )
        self.images = self.progress.add_task("images", total=None)
        self.tiles = self.progress.add_task("tiles", total=None, visible=False)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def begin(self, images: int) -> None:
        self.progress.update(self.images, total=images)

    def image_started(self, source: Path, tiles: int) -> None:
        self.progress.update(self.images, description=f"images ({source.name})")
        self.progress.reset(self.tiles, total=tiles, visible=tiles > BIG_IMAGE_TILES)

    def tiles_done(self, done: int, total: int) -> None:
        self.progress.update(self.tiles, completed=done)

    def image_finished(self, source: Path, status: str, reason: str = "") -> None:
        self.progress.update(self.tiles, visible=False)
        self.progress.advance(self.images)
        if status == "failed":
            self.errors.print(f"failed {source}: {reason}", markup=False, soft_wrap=True)
