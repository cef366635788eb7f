"""``tfsky evaluate ...``: measure a trained model on labelled images and write JSON + Markdown reports."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Optional

import typer

from tfsky.cli.options import QuietOption, tiling_from_flags
from tfsky.cli.options import OverlapOption, TileBatchOption, TileOption, TtaOption, WindowOption  # tiling flags

app = typer.Typer(help="Evaluate trained models against labelled data and naive baselines.", no_args_is_help=True)


@app.command()
def segmenter(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file written by tfsky train (.keras).")],
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="Prepared cache (manifest.json), images/ + masks/ folder, or camera folder."
        ),
    ],
    split: Annotated[str, typer.Option("--split", help="Cache split to evaluate (ignored for folders).")] = "val",
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Report folder. Default: eval/ beside the model.")
    ] = None,
    labels: Annotated[
        Optional[Path],
        typer.Option("--labels", help="CSV with image,sky_condition columns: per-condition breakdown for folders."),
    ] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Sky probability threshold.")] = 0.5,
    band: Annotated[float, typer.Option("--band", help="Boundary F1 tolerance in pixels.")] = 3.0,
    tile: TileOption = None,
    overlap: OverlapOption = None,
    window: WindowOption = None,
    tile_batch: TileBatchOption = None,
    tta: TtaOption = None,
    quiet: QuietOption = False,
) -> None:
    """IoU, F1, pixel accuracy, MCR and boundary F1 of a segmenter and two naive baselines.

    Writes eval.json and eval.md; exits 1 when an image had to be skipped.
    """
    from rich.console import Console

    from tfsky.evaluate.report import rich_table
    from tfsky.evaluate.segmenter import evaluate_segmenter, overall_table, verdict

    tiling = tiling_from_flags(tile=tile, overlap=overlap, window=window, tile_batch=tile_batch, tta=tta)
    console = Console(quiet=quiet)
    out_dir = out or model.parent / "eval"
    with console.status("loading the model, fitting the baselines...") as status:
        done = itertools.count(1)
        report = evaluate_segmenter(
            model, data, split=split, threshold=threshold, band=band, labels_csv=labels, out_dir=out_dir,
            tiling=tiling, on_image=lambda image_id: status.update(f"evaluated {next(done)} images (last: {image_id})"),
        )
    summary = report.to_json()
    console.print(rich_table(overall_table(summary)))
    console.print(verdict(summary))
    for skipped in report.skipped:
        typer.echo(f"skipped {skipped['id']}: {skipped['reason']}", err=True)
    typer.echo(
        f"evaluated {len(report.images)} images, skipped {len(report.skipped)}; wrote {out_dir}/eval.json, eval.md"
    )
    if report.skipped:
        raise typer.Exit(1)


@app.command()
def classifier(
    model: Annotated[Path, typer.Option("--model", "-m", help="Classifier .keras file written by tfsky train.")],
    split: Annotated[str, typer.Option("--split", help="Split to evaluate: val or train.")] = "val",
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Report folder. Default: eval/ beside the model.")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Accuracy, per-class P/R/F1, confusion matrix and calibration vs majority-class and colour baselines.

    The split by source is rebuilt from the model's config. Writes classifier_eval.json/.md,
    confusion.png and reliability.png.
    """
    from rich.console import Console

    from tfsky.evaluate.classifier import evaluate_classifier, summary_table
    from tfsky.evaluate.report import rich_table

    if split not in ("train", "val"):
        raise typer.BadParameter(f"must be train or val; got {split!r}", param_hint="--split")
    report = evaluate_classifier(model, out or model.parent / "eval", split)
    Console(quiet=quiet).print(rich_table(summary_table(report)))
    typer.echo(f"wrote {', '.join(str(p) for p in report.files)}")


@app.command()
def translator(
    model: Annotated[Path, typer.Option("--model", "-m", help="Translator .keras file (pix2pix or vae).")],
    pairs: Annotated[Path, typer.Option("--pairs", "-p", help="Pairs file written by tfsky streams pairs.")],
    split: Annotated[str, typer.Option("--split", help="Pairs split to evaluate: val or train.")] = "val",
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Report folder. Default: eval/ beside the model.")
    ] = None,
    tile: TileOption = None,
    overlap: OverlapOption = None,
    window: WindowOption = None,
    tile_batch: TileBatchOption = None,
    tta: TtaOption = None,
    quiet: QuietOption = False,
) -> None:
    """PSNR, SSIM, L1, non-sky and sky PSNR of a translator vs identity and mean-target-sky baselines.

    Writes translator_eval.json, translator_eval.md and contact_sheet.png; exits 1 when a pair had to be skipped.
    """
    from rich.console import Console

    from tfsky.evaluate.report import rich_table
    from tfsky.evaluate.translator import evaluate_translator, summary_table

    tiling = tiling_from_flags(tile=tile, overlap=overlap, window=window, tile_batch=tile_batch, tta=tta)
    console = Console(quiet=quiet)
    out_dir = out or model.parent / "eval"
    with console.status("translating the pairs...") as status:
        report = evaluate_translator(
            model, pairs, out_dir, split=split, tiling=tiling,
            on_pair=lambda pair: status.update(f"evaluated {Path(pair.source).name} -> {Path(pair.target).name}"),
        )
    console.print(rich_table(summary_table(report)))
    for skipped in report.skipped:
        typer.echo(f"skipped {skipped['source']} -> {skipped['target']}: {skipped['reason']}", err=True)
    files = ", ".join(str(p) for p in report.files)
    typer.echo(f"evaluated {len(report.per_pair)} pairs, skipped {len(report.skipped)}; wrote {files}")
    if report.skipped:
        raise typer.Exit(1)
