"""Metric tables written as one JSON file (everything) and one Markdown file (for people).

Any evaluation builds `Table` values from its results and calls `write_report`;
the CLI prints the same tables with `rich_table`, so the terminal, the
Markdown and the JSON never disagree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table as RichTable

from tfsky.io.atomic import write_json, write_text

FLOAT_DIGITS = 4


@dataclasses.dataclass
class Table:
    """A titled table of cells; floats are shown with 4 decimals, ``None`` as a dash, strings as given.

    Args:
        title: str. Heading above the table.
        columns: list[str]. Column headers.
        rows: list[list]. One list of cells per row, as long as ``columns``.
        note: str. A sentence printed under the title (what is aggregated, how). Defaults to "".
    """

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


def format_cell(value: Any) -> str:
    """The text of one cell: floats to 4 decimals, ``None`` as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{FLOAT_DIGITS}f}"
    return str(value)


def signed(value: float) -> str:
    """A difference with its sign, e.g. ``+0.1234``, for delta columns."""
    return f"{value:+.{FLOAT_DIGITS}f}"


def markdown_table(table: Table) -> str:
    """``## title``, the note, then a GitHub-flavoured Markdown table."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(format_cell(cell).replace("|", "\\|") for cell in cells) + " |"

    parts = [f"## {table.title}", ""]
    if table.note:
        parts += [table.note, ""]
    parts += [line(table.columns), "|" + "---|" * len(table.columns)]
    parts += [line(row) for row in table.rows]
    return "\n".join(parts) + "\n"


def markdown_document(title: str, paragraphs: Sequence[str], tables: Sequence[Table]) -> str:
    """A Markdown report: ``# title``, the paragraphs, then each table."""
    parts = [f"# {title}\n", *(f"{text}\n" for text in paragraphs), *(markdown_table(t) for t in tables)]
    return "\n".join(parts)


def rich_table(table: Table) -> RichTable:
    """The same table for the terminal."""
    result = RichTable(title=table.title, caption=table.note or None)
    for index, column in enumerate(table.columns):
        result.add_column(column, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in table.rows:
        result.add_row(*(format_cell(cell) for cell in row))
    return result


def write_report(out_dir: str | Path, stem: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """Atomically write ``<out_dir>/<stem>.json`` (``data``) and ``<out_dir>/<stem>.md``; return both paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_json(json_path, data)
    write_text(md_path, markdown)
    return json_path, md_path
