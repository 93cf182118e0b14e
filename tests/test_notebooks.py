"""The committed lessons as a learner opens them: each notebook read as JSON, nothing executed.

- no output on stderr and no error output, and no transformers load or save bar ("Loading
  weights", "Writing model shards": a saved notebook shows them at 0%); they are silenced where
  they come from, so a saved lesson shows none;
- no line of code over 100 characters (JupyterLab at 1280x800 cuts longer ones off);
- every markdown image (``![alt](path)`` or ``<img src=...>``) is a file inside the folder that
  ``make course`` serves, the repository root, found relative to the notebook as JupyterLab
  finds it (or a cell attachment, or a ``data:`` URI); nothing is fetched from the network;
- every lesson has a questions section: a markdown heading ``## Questions`` (``## 7. Questions``
  and ``## Questions and answers`` count too).

Each check runs once per notebook, so a failure names the lesson and the check; its message
names the cell (numbered from 0, as JupyterLab's cells are counted) and what to fix.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVED = REPO  # `make course` serves the repository root (--ServerApp.root_dir=.)
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAX_LINE = 100
LOAD_SAVE_BARS = ("Loading weights", "Writing model shards")  # transformers' tqdm bars

MARKDOWN_IMAGE = re.compile(  # ![alt](path), ![alt](<path with spaces>), either with a "title"
    r"!\[[^\]]*\]\(\s*(?:<([^>]+)>|([^\s)]+))(?:\s+[\"'][^)]*[\"'])?\s*\)")
HTML_IMAGE = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*([\"'])(.*?)\1", re.IGNORECASE | re.DOTALL)
CODE_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
QUESTIONS = re.compile(r"^##\s+(?:\d+\.?\s+)?Questions\b", re.MULTILINE | re.IGNORECASE)


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def images(markdown: str) -> list[str]:
    """The image addresses in a markdown cell, outside code blocks."""
    markdown = CODE_FENCE.sub("", markdown)
    return ([m.group(1) or m.group(2) for m in MARKDOWN_IMAGE.finditer(markdown)]
            + [m.group(2) for m in HTML_IMAGE.finditer(markdown)])


def image_problem(notebook: Path, cell: dict, address: str, served: Path = SERVED) -> str | None:
    """Why ``address`` would not show in JupyterLab serving ``served``, or None if it does."""
    url = urlparse(address)
    if url.scheme == "data":
        return None
    if url.scheme == "attachment":
        if unquote(url.path) in cell.get("attachments", {}):
            return None
        return f"names the attachment {url.path!r}, which the cell does not hold"
    if url.scheme or url.netloc:
        return "is fetched from the network; the course runs offline: commit the file under img/"
    relative = unquote(url.path)
    target = ((served / relative.lstrip("/")) if relative.startswith("/")
              else (notebook.parent / relative)).resolve()
    if not target.is_relative_to(served.resolve()):
        return (f"resolves to {target}, outside {served}, the folder `make course` serves: "
                "JupyterLab cannot show it")
    if not target.is_file():
        return f"resolves to {target}, which does not exist"
    return None


@pytest.fixture(params=NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def notebook(request) -> Path:
    return request.param


def test_there_are_lessons():
    assert len(NOTEBOOKS) >= 5, f"expected the lessons in {REPO / 'notebooks'}"


def test_no_stderr_and_no_errors_in_outputs(notebook):
    found = []
    for n, cell in enumerate(cells(notebook)):
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "stream" and output.get("name") == "stderr":
                text = "".join(output.get("text", ""))
                found.append(f"cell {n}: stderr: {text.strip()[:200]!r}")
            elif kind == "error":
                found.append(f"cell {n}: error: {output.get('ename')}: "
                             f"{output.get('evalue', '')[:200]}")
            elif "application/vnd.jupyter.stderr" in output.get("data", {}):
                found.append(f"cell {n}: stderr (display data)")
    assert not found, (f"{notebook.name}: outputs a learner should not see; silence them where "
                       "they come from, then re-execute the notebook:\n" + "\n".join(found))


def test_no_load_or_save_progress_bars_in_outputs(notebook):
    found = []
    for n, cell in enumerate(cells(notebook)):
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/plain", output.get("text", ""))
            text = "".join(text) if isinstance(text, list) else text
            found += [f"cell {n}: {text.strip()[:80]!r}" for bar in LOAD_SAVE_BARS if bar in text]
    assert not found, (f"{notebook.name}: load/save bars in outputs (rlhf_lite.models loads and "
                       "saves quietly; re-execute the notebook):\n" + "\n".join(found))


def test_no_code_line_over_100_characters(notebook):
    found = [f"cell {n}, line {i}: {len(line)} characters: {line[:60]}..."
             for n, cell in enumerate(cells(notebook)) if cell["cell_type"] == "code"
             for i, line in enumerate(source(cell).splitlines(), 1) if len(line) > MAX_LINE]
    assert not found, (f"{notebook.name}: {len(found)} code lines over {MAX_LINE} characters "
                       "(cut off at 1280x800); wrap them:\n" + "\n".join(found))


def test_every_markdown_image_is_a_file_inside_the_served_folder(notebook):
    found, seen = [], 0
    for n, cell in enumerate(cells(notebook)):
        if cell["cell_type"] != "markdown":
            continue
        for address in images(source(cell)):
            seen += 1
            problem = image_problem(notebook, cell, address)
            if problem:
                found.append(f"cell {n}: image {address!r} {problem}")
    assert not found, f"{notebook.name} (relative to {notebook.parent}):\n" + "\n".join(found)


def test_every_lesson_has_a_questions_section(notebook):
    headings = [n for n, cell in enumerate(cells(notebook))
                if cell["cell_type"] == "markdown" and QUESTIONS.search(source(cell))]
    assert headings, (f"{notebook.name}: no markdown heading '## Questions'; end the lesson with "
                      "a summary, 5-8 questions with answers in <details>, and the words it "
                      "introduced")


# The checks themselves, on small notebooks made here: each one fails for what it names.

def write(tmp_path: Path, cells: list[dict]) -> Path:
    path = tmp_path / "notebooks" / "lesson.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))
    return path


def test_image_addresses_are_found_and_judged(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a b.png").write_bytes(b"png")
    markdown = ("![x](../img/a%20b.png) ![y](<../img/a b.png> \"title\")\n"
                "<img alt='z' src=\"../img/missing.png\" width=300>\n"
                "```\n![not an image](in/a/code/block.png)\n```\n"
                "![far](../../outside.png) ![web](https://example.com/x.png) "
                "![att](attachment:p.png)")
    cell = {"cell_type": "markdown", "source": markdown, "attachments": {"p.png": {}}}
    notebook = write(tmp_path, [cell])
    found = images(markdown)
    assert found == ["../img/a%20b.png", "../img/a b.png", "../../outside.png",
                     "https://example.com/x.png", "attachment:p.png", "../img/missing.png"]
    problems = {address: image_problem(notebook, cell, address, tmp_path) for address in found}
    assert problems["../img/a%20b.png"] is problems["../img/a b.png"] is None
    assert problems["attachment:p.png"] is None
    assert "does not exist" in problems["../img/missing.png"]
    assert "outside" in problems["../../outside.png"]
    assert "network" in problems["https://example.com/x.png"]
    assert "attachment" in image_problem(notebook, {}, "attachment:p.png", tmp_path)
    # the same picture from a server started in notebooks/ (what `make course` used to do)
    assert "outside" in image_problem(notebook, cell, "../img/a%20b.png", tmp_path / "notebooks")


def test_questions_heading_is_found():
    assert QUESTIONS.search("text\n## Questions\n") and QUESTIONS.search("## 7. Questions")
    assert QUESTIONS.search("## Questions and answers")
    assert not QUESTIONS.search("Some questions remain.\n### Notes")
    assert not QUESTIONS.search("# Lesson\nquestions: none")
