"""README.md and docs/: every relative link resolves, and every ``tfsky ...`` command line shown parses.

"Parses" is ``--help``-level: the command path exists and every flag it uses is one of that command's
options. The docs are what a newcomer copies first, so a renamed flag or a moved page must fail here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import unquote

import pytest
import typer.main

from tfsky.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`]+)`")
FENCE = re.compile(r"^\s*(```|~~~)")
COMMAND_START = re.compile(r"^\s*(?:\$\s+)?(tfsky\s.*|tfsky)$")


def prose_and_code(path: Path) -> tuple[list[tuple[int, str]], list[list[tuple[int, str]]]]:
    """The file's lines outside fenced code blocks, and each code block's lines, with their line numbers."""
    prose, blocks, in_fence = [], [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            if in_fence:
                blocks.append([])
            continue
        (blocks[-1] if in_fence else prose).append((number, line))
    return prose, blocks


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the file's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors: set[str] = set()
    for _, line in prose_and_code(path)[0]:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def relative_links() -> list[tuple[str, str]]:
    """(``file:line``, target) for every link that is not a URL."""
    links = []
    for path in DOC_FILES:
        for number, line in prose_and_code(path)[0]:
            line = INLINE_CODE.sub("", line)
            for target in LINK.findall(line):
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    links.append((f"{path.relative_to(ROOT)}:{number}", target))
    return links


def command_lines() -> list[tuple[str, str]]:
    """(``file:line``, command) for every ``tfsky ...`` line of a code block and every inline `tfsky ...`.

    In a block that shows a session (``$ tfsky ...`` then its output) only the ``$`` lines are commands.
    """
    commands = []
    for path in DOC_FILES:
        prose, blocks = prose_and_code(path)
        for block in blocks:
            session = any(line.lstrip().startswith("$ ") for _, line in block)
            pending, start = "", 0
            for number, line in block:
                if pending:
                    pending += " " + line.strip()
                else:
                    match = COMMAND_START.match(line)
                    if not match or (session and not line.lstrip().startswith("$ ")):
                        continue
                    pending, start = match.group(1).strip(), number
                if pending.endswith("\\"):
                    pending = pending[:-1]
                    continue
                commands.append((f"{path.relative_to(ROOT)}:{start}", pending))
                pending = ""
        for number, line in prose:
            for span in INLINE_CODE.findall(line):
                if COMMAND_START.match(span):
                    commands.append((f"{path.relative_to(ROOT)}:{number}", span))
    return commands


@pytest.mark.parametrize(("where", "target"), relative_links(), ids=lambda value: str(value))
def test_relative_link_resolves(where, target):
    source = ROOT / where.rsplit(":", 1)[0]
    file_part, _, anchor = unquote(target).partition("#")
    resolved = (source.parent / file_part).resolve() if file_part else source
    assert resolved.exists(), f"{where}: {target} -> {resolved} does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in heading_anchors(resolved), f"{where}: no heading #{anchor} in {resolved.relative_to(ROOT)}"


def test_docs_show_commands():
    """The command checker below sees the docs' commands (a broken extractor would pass vacuously)."""
    shown = {command.split()[1] for _, command in command_lines() if len(command.split()) > 1}
    assert {"predict", "train", "serve", "doctor"} <= shown


@pytest.mark.parametrize(("where", "command"), command_lines(), ids=lambda value: str(value))
def test_command_line_parses(where, command):
    problem = command_problem(command)
    assert not problem, f"{where}: {command!r}: {problem}"


def command_problem(command: str) -> str:
    """Why ``command`` would not parse as a tfsky command line, or ``""``."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError as err:
        return f"not a shell line ({err})"
    words = [word.strip("[]") for word in words[1:]]
    words = [word for word in words if word and "..." not in word and word not in ("|", "&")]
    cmd = typer.main.get_command(app)
    path = ["tfsky"]
    while hasattr(cmd, "commands") and words and not words[0].startswith("-"):  # a group: descend
        sub = cmd.commands.get(words[0])
        if sub is None:
            return f"{' '.join(path)} has no command {words[0]!r} (it has: {', '.join(sorted(cmd.commands))})"
        path.append(words.pop(0))
        cmd = sub
    known = {"--help"} | {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
    for word in words:
        if re.match(r"^--?[A-Za-z]", word):
            flag = word.split("=", 1)[0]
            if flag not in known:
                return f"{' '.join(path)} has no option {flag}"
    return ""
