"""``tfsky evaluate ...``: measure a trained model on labelled images and write JSON + Markdown reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional, Sequence

import typer

from tfsky.cli.messages import ProgressBar
from tfsky.cli.options import ConfigOption, QuietOption, SetOption, command_config, tiling_flags, training_config
from tfsky.cli.options import (
    MemoryBudgetOption,
    OverlapOption,
    TileBatchOption,
    TileOption,
    TtaOption,
    WindowOption,
)  # tiling flags
from tfsky.cli.options import ResolutionOption

app = typer.Typer(help="Evaluate trained models against labelled data and naive baselines.", no_args_is_help=True)

SplitOption = Annotated[
    Optional[str],
    typer.Option(
        "--split", help="Cache split, or pairs split val | train (folders have none) (config: evaluate.split)."
    ),
]
OutOption = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Report folder. Default: eval/ beside the model.")
]


@app.command()
def segmenter(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file written by tfsky train (.keras).")],
    data: Annotated[
        Path,
        typer.Option("--data", "-d", help="Prepared cache (manifest.json), images/ + masks/ folder, or camera folder."),
    ],
    split: SplitOption = None,
    out: OutOption = None,
    labels: Annotated[
        Optional[Path],
        typer.Option("--labels", help="CSV with image,sky_condition columns: per-condition breakdown for folders."),
    ] = None,
    threshold: Annotated[
        Optional[float], typer.Option("--threshold", help="Sky probability threshold (config: evaluate.threshold).")
    ] = None,
    band: Annotated[
        Optional[float], typer.Option("--band", help="Boundary F1 tolerance in pixels (config: evaluate.band).")
    ] = None,
    drop_enclosed: Annotated[
        Optional[bool],
        typer.Option(
            "--drop-enclosed/--keep-enclosed",
            help="Score sky masks without the sky regions that touch no border of the frame, as tfsky predict "
            "--drop-enclosed draws them (config: evaluate.drop_enclosed; default: keep).",
        ),
    ] = None,
    tile: TileOption = None,
    overlap: OverlapOption = None,
    window: WindowOption = None,
    tile_batch: TileBatchOption = None,
    tta: TtaOption = None,
    memory_budget: MemoryBudgetOption = None,
    resolution: ResolutionOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """IoU, F1, pixel accuracy, MCR and boundary F1 of a segmenter and two naive baselines.

    A cloud model (two classes, trained on all-sky frames) gets per-class IoU, mIoU, pixel accuracy,
    cloud F1, cloud-fraction MAE, okta agreement and sky-condition confusion per camera, next to the
    red/blue, red - blue and CloudNet baselines.
    Options come from the ``evaluate:`` section of --config, then --set, then the flags above.
    Writes eval.json and eval.md; exits 1 when an image had to be skipped.
    """
    from rich.console import Console

    from tfsky.errors import ConfigError
    from tfsky.evaluate.config import EvaluateConfig
    from tfsky.evaluate.report import rich_table
    from tfsky.evaluate.segmenter import evaluate_segmenter, overall_table, verdict

    flags = {
        "split": split,
        "threshold": threshold,
        "band": band,
        "drop_enclosed": drop_enclosed,
        **tiling_flags(tile, overlap, window, tile_batch, tta, resolution, memory_budget),
    }
    cfg = command_config(EvaluateConfig, "evaluate", config, set_, flags)
    console = Console(quiet=quiet)
    out_dir = out or model.parent / "eval"
    from tfsky.models.bundle import ModelKind, kind_of

    if kind_of(model) is ModelKind.CLOUD:  # cloud metrics and cloud baselines (an unreadable model: reported below)
        if cfg.drop_enclosed:
            raise ConfigError("evaluate.drop_enclosed", "is for sky segmenters; a cloud model's clouds are enclosed")
        return _evaluate_cloud(model, data, cfg, out_dir, console)
    with ProgressBar("loading the model, fitting the baselines...", quiet) as progress:
        report = evaluate_segmenter(
            model,
            data,
            split=cfg.split,
            threshold=cfg.threshold,
            band=cfg.band,
            labels_csv=labels,
            out_dir=out_dir,
            tiling=cfg.tiling,
            drop_enclosed=cfg.drop_enclosed,
            progress=progress,
        )
    summary = report.to_json()
    console.print(rich_table(overall_table(summary)))
    console.print(verdict(summary))
    finish_evaluation(
        report.skipped, lambda skipped: skipped["id"], f"{len(report.images)} images", f"{out_dir}/eval.json, eval.md"
    )


@app.command()
def classifier(
    model: Annotated[Path, typer.Option("--model", "-m", help="Classifier .keras file written by tfsky train.")],
    split: SplitOption = None,
    out: OutOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Accuracy, per-class P/R/F1, confusion matrix and calibration vs majority-class and colour baselines.

    The split by source is rebuilt from the model's config (``evaluate.split``: val or train). Writes
    classifier_eval.json/.md, confusion.png and reliability.png.
    """
    from rich.console import Console

    from tfsky.errors import ConfigError
    from tfsky.evaluate.classifier import evaluate_classifier, summary_table
    from tfsky.evaluate.config import EvaluateConfig
    from tfsky.evaluate.report import rich_table

    cfg = command_config(EvaluateConfig, "evaluate", config, set_, {"split": split})
    if cfg.split not in ("train", "val"):
        raise ConfigError("evaluate.split", f"must be train or val for a classifier; got {cfg.split!r}")
    report = evaluate_classifier(model, out or model.parent / "eval", cfg.split)
    Console(quiet=quiet).print(rich_table(summary_table(report)))
    typer.echo(f"wrote {', '.join(str(p) for p in report.files)}")


@app.command()
def translator(
    model: Annotated[Path, typer.Option("--model", "-m", help="Translator .keras file (pix2pix, vae or colorize).")],
    pairs: Annotated[
        Optional[Path],
        typer.Option("--pairs", "-p", help="Pairs file written by tfsky streams pairs (not for a colorizer)."),
    ] = None,
    split: SplitOption = None,
    out: OutOption = None,
    tile: TileOption = None,
    overlap: OverlapOption = None,
    window: WindowOption = None,
    tile_batch: TileBatchOption = None,
    tta: TtaOption = None,
    memory_budget: MemoryBudgetOption = None,
    fit_gate: Annotated[
        bool,
        typer.Option(
            "--fit-gate",
            help="Colorizer only: first fit its chroma gate on its TRAINING split and store it in the "
            "model's sidecar (rewrites the .json beside it), then evaluate.",
        ),
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """PSNR, SSIM, L1, non-sky and sky PSNR of a translator vs identity and mean-target-sky baselines.

    Options come from the ``evaluate:`` section of --config (split, tiling), then --set, then the flags above.
    Writes translator_eval.json, translator_eval.md and contact_sheet.png; exits 1 when a pair had to be skipped.
    A colorizer (model.kind colorize) is evaluated on the held-out split of its own sources instead (no --pairs):
    PSNR, SSIM, ab L1 and colourfulness vs grey, mean-ab and nearest-colour baselines (tfsky.evaluate.colorize),
    for the model with its chroma gate and without; --fit-gate (re)fits the gate first, on the training split.
    """
    from rich.console import Console

    from tfsky.errors import ConfigError
    from tfsky.evaluate.config import EvaluateConfig
    from tfsky.evaluate.report import rich_table
    from tfsky.evaluate.translator import evaluate_translator, summary_table

    cfg = command_config(
        EvaluateConfig,
        "evaluate",
        config,
        set_,
        {"split": split, **tiling_flags(tile, overlap, window, tile_batch, tta, memory_budget=memory_budget)},
    )
    console = Console(quiet=quiet)
    out_dir = out or model.parent / "eval"
    from tfsky.models.bundle import ModelKind, kind_of

    if kind_of(model) is ModelKind.COLORIZER:  # an unreadable model: the translator evaluation reports it
        return _evaluate_colorizer(model, cfg, out_dir, console, fit_gate)
    if fit_gate:
        raise ConfigError("--fit-gate", "is for a colorizer (model.kind colorize) only")
    if pairs is None:
        raise ConfigError(
            "--pairs", "is required for a pix2pix or vae translator (a pairs file of tfsky streams pairs)"
        )
    with ProgressBar("loading the model...", quiet) as progress:
        report = evaluate_translator(model, pairs, out_dir, split=cfg.split, tiling=cfg.tiling, progress=progress)
    console.print(rich_table(summary_table(report)))
    finish_evaluation(
        report.skipped,
        lambda skipped: f"{skipped['source']} -> {skipped['target']}",
        f"{len(report.per_pair)} pairs",
        ", ".join(str(p) for p in report.files),
    )


@app.command()
def precision(
    model: Annotated[Path, typer.Option("--model", "-m", help="Segmenter .keras file written by tfsky train.")],
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            "-c",
            dir_okay=False,
            help="The model's training config. Default: config.yaml beside the model (its run folder's).",
        ),
    ] = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """bfloat16 against float32 on the model's validation batches; stores the verdict in its sidecar.

    Mask agreement (the sky cut at the stored threshold, the arg-max class of a cloud model) and the IoU in
    each precision; ok when agreement >= 0.999 and the IoU moves by < 0.002. ``precision: auto`` then
    predicts in bfloat16 with this model on a CPU with a bfloat16 unit (AMX-BF16 / AVX512-BF16). Training
    stores the verdict itself; this command measures it for a model trained before. Rewrites the .json
    beside the model; the cache of --config (data.cache, relative to where training ran) must be prepared.
    """
    from tfsky.errors import ConfigError
    from tfsky.models.bundle import ModelKind, load_info
    from tfsky.models.precision import describe_verdict
    from tfsky.train.bfloat16 import check_bfloat16
    from tfsky.train.config import SegmenterConfig

    load_info(model, ModelKind.SEGMENTER)  # a mistyped model is reported as such, before its config
    if config is None and not (model.parent / "config.yaml").is_file():
        raise ConfigError("--config", f"not given, and there is no config.yaml beside {model}")
    cfg = training_config(SegmenterConfig, config or model.parent / "config.yaml", set_)
    with ProgressBar("float32 and bfloat16 on the validation batches...", quiet) as progress:
        verdict = check_bfloat16(model, cfg, progress)
    typer.echo(
        f"{model}: {verdict['pixels']} validation pixels on {verdict['cpu']}: {describe_verdict(verdict)}; "
        f"stored in {model.with_suffix('.json')}"
    )


def _evaluate_colorizer(model: Path, cfg, out_dir: Path, console, fit_gate: bool) -> None:
    """`tfsky evaluate translator` on a colorizer (its gate fitted first with ``fit_gate``); exits 1 when an
    image had to be skipped."""
    from tfsky.evaluate.colorize import evaluate_colorizer, summary_table
    from tfsky.evaluate.report import rich_table
    from tfsky.train.chroma_gate import fit_chroma_gate

    if fit_gate:
        with ProgressBar("fitting the chroma gate on the training split...", console.quiet) as progress:
            fit = fit_chroma_gate(model, cfg.tiling, progress=progress)
        typer.echo(fit.summary())

    with ProgressBar("loading the model, fitting the baselines...", console.quiet) as progress:
        report = evaluate_colorizer(model, out_dir, split=cfg.split, tiling=cfg.tiling, progress=progress)
    console.print(rich_table(summary_table(report)))
    finish_evaluation(
        report.skipped,
        lambda skipped: skipped["image"],
        f"{len(report.per_image)} images",
        ", ".join(str(p) for p in report.files),
    )


def _evaluate_cloud(model: Path, data: Path, cfg, out_dir: Path, console) -> None:
    """The cloud branch of `tfsky evaluate segmenter`: `tfsky.evaluate.cloud.evaluate_cloud` with the evaluate
    config ``cfg``; prints the tables; exits 1 when a frame had to be skipped."""
    from tfsky.evaluate.cloud import condition_table, evaluate_cloud, results_table
    from tfsky.evaluate.report import rich_table

    with ProgressBar(
        "loading the model, fitting the baselines (CloudNet trains for a minute)...", console.quiet
    ) as progress:
        report = evaluate_cloud(
            model,
            data,
            split=cfg.split,
            threshold=cfg.threshold,
            out_dir=out_dir,
            tiling=cfg.tiling,
            cover=cfg.cloud,
            progress=progress,
        )
    summary = report.to_json()
    for group in summary["results"]:
        console.print(rich_table(results_table(summary, group)))
    console.print(rich_table(condition_table(summary)))
    finish_evaluation(
        report.skipped, lambda skipped: skipped["id"], f"{len(report.frames)} frames", f"{out_dir}/eval.json, eval.md"
    )


def finish_evaluation(skipped: Sequence[dict], name: Callable[[dict], str], evaluated: str, wrote: str) -> None:
    """The ending of every evaluation: ``skipped <name>: <reason>`` per skipped item (stderr), then
    ``evaluated <evaluated>, skipped N; wrote <wrote>``; exit 1 when anything was skipped."""
    for item in skipped:
        typer.echo(f"skipped {name(item)}: {item['reason']}", err=True)
    typer.echo(f"evaluated {evaluated}, skipped {len(skipped)}; wrote {wrote}")
    if skipped:
        raise typer.Exit(1)
