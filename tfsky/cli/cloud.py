"""The cloud branch of ``tfsky evaluate segmenter``: a two-class all-sky model gets the cloud evaluation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from tfsky.cli.messages import ProgressBar


def evaluate_cloud_command(model: Path, data: Path, cfg, out_dir: Path, console: Console) -> None:
    """Run `tfsky.evaluate.cloud.evaluate_cloud` with the evaluate config ``cfg``; print the tables; exit 1 on skips."""
    from tfsky.evaluate.cloud import condition_table, evaluate_cloud, results_table
    from tfsky.evaluate.report import rich_table

    with ProgressBar("loading the model, fitting the baselines (CloudNet trains for a minute)...",
                     console.quiet) as progress:
        report = evaluate_cloud(
            model, data, split=cfg.split, threshold=cfg.threshold, out_dir=out_dir, tiling=cfg.tiling,
            cover=cfg.cloud, progress=progress,
        )
    summary = report.to_json()
    for group in summary["results"]:
        console.print(rich_table(results_table(summary, group)))
    console.print(rich_table(condition_table(summary)))
    for skipped in report.skipped:
        typer.echo(f"skipped {skipped['id']}: {skipped['reason']}", err=True)
    typer.echo(f"evaluated {len(report.frames)} frames, skipped {len(report.skipped)}; "
               f"wrote {out_dir}/eval.json, eval.md")
    if report.skipped:
        raise typer.Exit(1)
