"""``tfsky data ...``: look at files and labels, prepare the training cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tfsky.cli.messages import ProgressBar
from tfsky.cli.options import ConfigOption, QuietOption, SetOption, training_section
from tfsky.errors import TfskyError

app = typer.Typer(help="Inspect images, rasterise COCO labels, prepare the training cache.", no_args_is_help=True)


@app.command()
def inspect(
    files: Annotated[list[Path], typer.Argument(help="Image files (.jpg .png .exr .hdr .tif ...).")],
) -> None:
    """One line per file: format, size, channels, dtype, value range, NaN/Inf counts. Exit 1 if any file failed."""
    from tfsky.io.inspect import inspect_file

    failed = 0
    for path in files:
        try:
            info = inspect_file(path)
        except TfskyError as err:
            typer.echo(str(err), err=True)
            failed += 1
            continue
        typer.echo(
            f"{info.path}  {info.format}  {info.width}x{info.height}x{info.channels}  {info.dtype}  "
            f"min={info.min:.6g} max={info.max:.6g}  nan={info.nan_count} inf={info.inf_count}"
        )
    if failed:
        typer.echo(f"{failed} of {len(files)} files could not be read", err=True)
        raise typer.Exit(1)


@app.command()
def masks(
    annotations: Annotated[Path, typer.Argument(help="COCO annotation JSON.", dir_okay=False)],
    images: Annotated[Path, typer.Option("--images", help="Folder the image file_names are relative to.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the 0/255 PNG masks.")],
    positive: Annotated[
        Optional[list[str]], typer.Option("--positive", help="Category that is 1 (repeatable). Default: sky.")
    ] = None,
    negative: Annotated[
        Optional[list[str]], typer.Option("--negative", help="Category cut out of the mask (repeatable).")
    ] = None,
) -> None:
    """Rasterise COCO annotations into one binary mask PNG per image. Exit 1 if none was written."""
    from tfsky.data.coco import write_masks
    from tfsky.data.config import SKY_CATEGORIES

    report = write_masks(annotations, images, out, positive or SKY_CATEGORIES, negative or [])
    for file_name, reason in report.skipped:
        typer.echo(f"skipped {file_name}: {reason}", err=True)
    typer.echo(f"wrote {len(report.written)} masks to {out}, skipped {len(report.skipped)}")
    if not report.written:
        raise typer.Exit(1)


@app.command()
def prepare(
    config: ConfigOption = None,
    overrides: SetOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first bad item, don't skip it.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Read the config's label sources once into a sharded TFRecord cache (full images + masks) with a manifest.

    The whole file is checked as ``tfsky train segmenter`` checks it, before anything is written.
    Bad items are skipped and listed; exit 1 if nothing usable is left, or with --strict on any skip.
    """
    from tfsky.data.cache import prepare_cache
    from tfsky.train.config import SegmenterConfig

    cfg = training_section(SegmenterConfig, "data", config, overrides)
    with ProgressBar("reading the sources...", quiet) as progress:
        report = prepare_cache(cfg, strict=strict, progress=progress)
    for item_id, reason in report.skipped:
        typer.echo(f"skipped {item_id}: {reason}", err=True)
    written = ", ".join(f"{count} {split}" for split, count in report.written.items())
    typer.echo(
        f"wrote {sum(report.written.values())} images ({written}) to {report.cache}, "
        f"skipped {len(report.skipped)}, {report.bytes / 2**20:.1f} MiB in {report.seconds:.1f} s"
    )
