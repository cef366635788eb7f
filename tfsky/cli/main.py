"""The ``tfsky`` command: a thin Typer layer over the package.

Each command group lives in its own module and calls one API function.
`TfskyError` raised anywhere below is printed as one line (``Error: ...``)
with exit code 1 — user errors never show a traceback.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from tfsky.errors import TfskyError


class _Group(TyperGroup):
    """Root group that turns `TfskyError` from any subcommand into a one-line error."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TfskyError as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    help="tfsky: prepare sky imagery, train segmenters and weather translators, predict on 8K tiles, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from tfsky.cli import data
    from tfsky.cli import evaluate

    app.add_typer(data.app, name="data")
    app.add_typer(evaluate.app, name="evaluate")
    from tfsky.cli import streams

    app.add_typer(streams.app, name="streams")
    from tfsky.cli import predict

    app.command("predict")(predict.predict_cli)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
