"""Metric reports: one table rendered the same way in Markdown, JSON and the terminal, written atomically."""

from __future__ import annotations

import json

from rich.console import Console

from tfsky.evaluate.report import (
    Table,
    format_cell,
    markdown_document,
    markdown_table,
    rich_table,
    signed,
    write_report,
)

TABLE = Table(
    "Headline",
    ["method", "IoU", "note"],
    [["model", 0.861234, None], ["horizon | row", 0.5, "fitted"]],
    note="dataset-level",
)


def test_cells_show_four_decimals_a_dash_for_none_and_signed_deltas():
    assert [format_cell(v) for v in (0.86125, 1.0, None, 3, "x")] == ["0.8612", "1.0000", "—", "3", "x"]
    assert (signed(0.1), signed(-0.25), signed(0.0)) == ("+0.1000", "-0.2500", "+0.0000")


def test_markdown_table_has_title_note_header_and_escaped_pipes():
    assert markdown_table(TABLE).splitlines() == [
        "## Headline",
        "",
        "dataset-level",
        "",
        "| method | IoU | note |",
        "|---|---|---|",
        "| model | 0.8612 | — |",
        "| horizon \\| row | 0.5000 | fitted |",
    ]
    assert "dataset-level" not in markdown_table(Table("T", ["a"], [[1]]))


def test_document_puts_paragraphs_before_the_tables():
    text = markdown_document("Eval", ["first", "second"], [TABLE, Table("Other", ["a"], [[1.0]])])
    assert text.startswith("# Eval\n")
    assert text.index("first") < text.index("second") < text.index("## Headline") < text.index("## Other")


def test_terminal_table_shows_the_same_cells():
    console = Console(record=True, width=120)
    console.print(rich_table(TABLE))
    shown = console.export_text()
    for cell in ("Headline", "model", "0.8612", "—", "horizon | row", "0.5000", "dataset-level"):
        assert cell in shown


def test_write_report_writes_both_files_atomically(tmp_path):
    json_path, md_path = write_report(tmp_path / "eval", "eval", {"iou": 0.5, "images": [1, 2]}, "# Eval\n")
    assert (json_path, md_path) == (tmp_path / "eval" / "eval.json", tmp_path / "eval" / "eval.md")
    assert json.loads(json_path.read_text()) == {"iou": 0.5, "images": [1, 2]}
    assert md_path.read_text() == "# Eval\n"
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["eval.json", "eval.md"]  # no temporaries
