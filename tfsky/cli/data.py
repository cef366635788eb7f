"""``tfsky data ...``: look at files and labels, prepare the training cache."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect images, rasterise COCO labels, prepare the training cache.", no_args_is_help=True)
