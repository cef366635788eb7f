"""``tfsky streams ...``: validate, label and review webcam streams; build (source, target) weather pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tfsky.cli.options import ConfigOption, PortOption, QuietOption, SetOption, training_section

app = typer.Typer(help="Validate, label and review webcam streams; build weather pairs.", no_args_is_help=True)


@app.command()
def validate(
    source: Annotated[
        Optional[Path],
        typer.Argument(help="A stream.json or a folder of manifests to re-validate (default: import streams.root)."),
    ] = None,
    root: Annotated[Optional[Path], typer.Option(help="Folder tree <root>/<camera>/<frames> (streams.root).")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Labels CSV (streams.labels_csv).")] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "--manifest", help="Folder for <camera>/stream.json (default: streams.manifests)."),
    ] = None,
    segmenter: Annotated[
        Optional[Path], typer.Option(help="Sky segmenter model: adds the sky-mask IoU camera-moved check.")
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Mark night, corrupt, blank, saturated, moved and low-confidence frames; write the manifests."""
    from tfsky.data.streams import REASONS, validate_streams
    from tfsky.train.config import TranslatorConfig

    extra = [f"streams.{key}={value}" for key, value in (("root", root), ("labels_csv", labels)) if value]
    cfg = training_section(TranslatorConfig, "streams", config, [*(overrides or []), *extra])
    report = validate_streams(cfg, source, out, _load_segmenter(segmenter))
    console = Console()
    for line in report.skipped:
        console.print(f"[yellow]skipped label row[/] {line}", markup=True, highlight=False, soft_wrap=True)
    if quiet:
        return
    table = Table("camera", "frames", "usable", *REASONS)
    for row in report.streams:
        table.add_row(row.camera, str(row.frames), str(row.usable), *(str(row.reasons[r]) for r in REASONS))
    console.print(table)
    for row in report.streams:
        console.print(f"{row.camera}: {row.manifest}", highlight=False)


@app.command()
def pairs(
    manifests: Annotated[
        Optional[Path], typer.Argument(help="A stream.json or a folder of manifests (default: streams.manifests).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Pairs file to write (default: pairs.file).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Pair source/target condition frames within each stream; split train/val by stream."""
    from tfsky.data.pairs import build_pairs, pairs_summary, write_pairs
    from tfsky.data.streams import load_streams
    from tfsky.train.config import TranslatorConfig

    streams_cfg = training_section(TranslatorConfig, "streams", config, overrides)
    cfg = training_section(TranslatorConfig, "pairs", config, overrides)
    pair_set = build_pairs(load_streams(manifests or streams_cfg.manifests), cfg)
    target = out or cfg.file
    write_pairs(pair_set, cfg, target)
    if quiet:
        return
    table = Table("split", "cameras", "pairs")
    for split, counts in pairs_summary(pair_set).items():
        table.add_row(split, str(counts["cameras"]), str(counts["pairs"]))
    console = Console()
    console.print(table)
    console.print(f"{cfg.source} -> {cfg.target}: {len(pair_set.pairs)} pairs written to {target}", highlight=False)


@app.command()
def label(
    manifests: Annotated[
        Optional[Path], typer.Argument(help="A stream.json or a folder of manifests (default: streams.manifests).")
    ] = None,
    classifier: Annotated[
        Path, typer.Option("--classifier", help="Weather classifier written by tfsky train classifier (.keras).")
    ] = ...,  # type: ignore[assignment]  # typer: required
    segmenter: Annotated[
        Optional[Path],
        typer.Option(
            "--segmenter",
            help="Sky segmenter: measure each frame's sky (share, colour statistics); frames "
            "without sky take no model label.",
        ),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Predict every frame's condition; frames without a human label take it (with its probability)."""
    from tfsky.predict.classify import label_streams
    from tfsky.train.config import TranslatorConfig

    folder = manifests or training_section(TranslatorConfig, "streams", config, overrides).manifests
    labelled, skipped = label_streams(folder, classifier, segmenter)
    for line in skipped:
        typer.echo(f"skipped {line}", err=True)
    if not quiet:
        Console().print(_label_table(labelled, bool(segmenter)))
    if skipped:
        raise typer.Exit(1)


def _label_table(labelled, segmenter: bool) -> Table:
    """The per-camera table of ``tfsky streams label``."""
    from collections import Counter

    from tfsky.predict.classify import MIN_SKY_FRACTION

    sky_columns = ("sky share", "no sky") if segmenter else ()  # mean share; frames below MIN_SKY_FRACTION
    table = Table(
        "camera", "frames", "predicted", "model labels", "human labels kept", *sky_columns, "conditions (model)"
    )
    for _, stream in labelled:
        predicted = [f for f in stream.frames if f.prediction]
        by_model = [f for f in stream.frames if f.label_source == "model"]
        counts = Counter(f.condition for f in by_model)
        skies = [f.prediction["sky"]["fraction"] for f in predicted if "sky" in f.prediction]
        sky_cells = (f"{sum(skies) / len(skies):.2f}" if skies else "-", str(sum(s < MIN_SKY_FRACTION for s in skies)))
        table.add_row(
            stream.camera,
            str(len(stream.frames)),
            str(len(predicted)),
            str(len(by_model)),
            str(sum(f.human_labelled for f in predicted)),
            *(sky_cells if segmenter else ()),
            ", ".join(f"{name} {count}" for name, count in counts.most_common()),
        )
    return table


@app.command()
def skymask(
    manifests: Annotated[
        Optional[list[Path]],
        typer.Argument(help="stream.json files or folders of manifests (default: streams.manifests)."),
    ] = None,
    model: Annotated[Path, typer.Option("--model", "-m", help="Sky segmenter (.keras with its sidecar).")] = ...,  # type: ignore[assignment]  # typer: required
    min_confidence: Annotated[
        float, typer.Option(help="Frames the model is less sure of (mean |2p-1|) are not used.")
    ] = 0.4,
    max_offset: Annotated[
        float, typer.Option(help="Largest camera shift that is aligned, as a fraction of the width.")
    ] = 0.15,
    threshold: Annotated[Optional[float], typer.Option(help="Sky probability cut (default: the model's).")] = None,
    min_region: Annotated[
        float, typer.Option(help="Sky regions smaller than this share of the frame are dropped.")
    ] = 0.01,
    keep_enclosed: Annotated[
        bool, typer.Option(help="Keep sky regions that touch no border of the frame (an all-sky fisheye's disc).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo streams whose camera mask is complete.")] = False,
    config: ConfigOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Learn one sky mask per camera from its usable frames; write it beside each manifest. Exit 1 if any failed."""
    from tfsky.cli.batch_options import JobProgress, finish
    from tfsky.predict.camera_mask import SkymaskConfig, skymask_streams
    from tfsky.train.config import TranslatorConfig

    folders = manifests or [training_section(TranslatorConfig, "streams", config, overrides).manifests]
    cfg = SkymaskConfig(
        min_confidence=min_confidence,
        max_offset=max_offset,
        threshold=threshold,
        min_region=min_region,
        keep_enclosed=keep_enclosed,
    )
    with JobProgress(quiet) as listener:
        report = skymask_streams(folders, model, cfg, overwrite=overwrite, listener=listener)
    finish(report, Path(" ".join(map(str, folders))), quiet)  # the outputs are beside each manifest


@app.command()
def review(
    manifests: Annotated[
        Optional[Path], typer.Argument(help="A stream.json or a folder of manifests (default: streams.manifests).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; the default serves this machine only.")] = "127.0.0.1",
    port: PortOption = 8765,
    segmenter: Annotated[
        Optional[Path], typer.Option(help="Sky segmenter: a frame's page shows its sky overlay.")
    ] = None,
    translator: Annotated[
        Optional[Path],
        typer.Option(
            help="Weather translator: a frame's page shows it translated (and, with --segmenter, sky-composited)."
        ),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    old_manifests: Annotated[
        Optional[Path], typer.Option("--manifests", hidden=True, help="Deprecated: give the manifests as the argument.")
    ] = None,
) -> None:
    """Review streams in a browser: accept/reject frames, fix labels, mark a camera move (Ctrl-C stops)."""
    from tfsky.review.app import is_loopback, review_server
    from tfsky.train.config import TranslatorConfig
    from tfsky.review.demo import FrameDemo

    if old_manifests is not None:  # every streams command takes the manifests as its argument
        if manifests is not None:
            raise typer.BadParameter("give the manifests once, as the argument", param_hint="--manifests")
        typer.echo(
            "Warning: --manifests is deprecated: give the manifests as the argument (tfsky streams review MANIFESTS)",
            err=True,
        )
        manifests = old_manifests
    folder = manifests or training_section(TranslatorConfig, "streams", config, overrides).manifests
    demo = FrameDemo(segmenter, translator) if segmenter or translator else None
    server = review_server(folder, host, port, demo=demo)
    if not is_loopback(host):
        typer.echo(
            f"Warning: serving on {host}: other machines can now reach the unauthenticated edit API and "
            "the raw frames (use the default 127.0.0.1 unless you mean it)",
            err=True,
        )
    typer.echo(f"reviewing {folder} at http://{host}:{server.server_port}/  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _load_segmenter(path: Optional[Path]):
    if path is None:
        return None
    from tfsky.predict.segment import TiledSegmenter

    return TiledSegmenter.load(path)
