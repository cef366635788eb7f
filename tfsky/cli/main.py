"""The ``tfsky`` command: a thin Typer layer over the package.

Each command group lives in its own module and calls one API function.
`TfskyError` raised anywhere below is printed as one line (``Error: ...``)
with exit code 1 — user errors never show a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from tfsky import __version__
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
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tfsky {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the tfsky version and exit."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or messages of any command (warnings still show).")
    ] = False,
) -> None:
    """tfsky: prepare sky imagery, train segmenters and weather translators, predict on 8K tiles, serve."""
    from tfsky.cli.messages import show_messages

    show_messages(quiet)  # the library's messages (the ``tfsky`` logger) on stderr, its bars drawn by each command


def _register() -> None:
    """Commands in the order of the flow: data -> train -> evaluate -> predict -> export/serve."""
    from tfsky.cli import client, colorize, data, doctor, evaluate, export, predict, serve, streams, train, translate

    app.add_typer(data.app, name="data")
    app.add_typer(streams.app, name="streams")
    app.add_typer(train.app, name="train")
    app.add_typer(evaluate.app, name="evaluate")
    app.command("predict")(predict.predict_cli)
    app.command("translate")(translate.translate_cli)
    app.command("colorize")(colorize.colorize_cli)
    app.command("export")(export.export_cli)
    app.command("serve")(serve.serve_cli)
    app.add_typer(client.app, name="client")
    app.command("doctor")(doctor.doctor_cli)


_register()


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with native stderr muted.

    TF 2.21 prints absl ``I0000 ...`` lines (oneDNN, CUDA stubs) while loading
    that no environment variable silences; a CLI user should not see them.
    Python-level errors still surface: the traceback is printed after stderr is back.
    """
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _needs_tensorflow() -> bool:
    """False when no command will run (shell completion on every Tab press, ``--help``, ``--version``): answer at once."""
    args = sys.argv[1:]
    return "_TFSKY_COMPLETE" not in os.environ and bool(args) and not {"--help", "--version"} & set(args)


def main() -> None:
    if not sys.stdout.isatty():  # logs and pipes: rich tables would otherwise be cut to 80 columns
        os.environ.setdefault("COLUMNS", "160")
    if _needs_tensorflow():
        _import_tensorflow_quietly()
    app(prog_name="tfsky")


if __name__ == "__main__":
    main()
