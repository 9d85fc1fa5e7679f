"""`flywheel kb`: add, list, search, update, remove through click's runner, and the errors it explains."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy.cli_kb import kb_group


@pytest.fixture
def run(tmp_path: Path):
    env = {"FLYWHEEL_KB_DIR": str(tmp_path / "kb"), "FLYWHEEL_KB_RERANKER_MODEL": None}

    def invoke(*args: str):
        return CliRunner().invoke(kb_group, list(args), env=env, terminal_width=200)

    return invoke


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "en").mkdir(parents=True)
    (root / "en" / "returns.md").write_text("# Returns\n\nYou can return most items within 30 days.\n", "utf-8")
    (root / "en" / "shipping.html").write_text(
        "<title>Shipping</title><p>Express shipping costs $14.95 and arrives in 1 to 2 business days.</p>", "utf-8"
    )
    return root


def test_add_list_search_update_remove(run, docs: Path):
    added = run("add", str(docs))
    assert added.exit_code == 0, added.output
    assert "en/returns.md" in added.output and "en/shipping.html" in added.output and "added" in added.output

    listed = run("list")
    assert listed.exit_code == 0
    assert "en/returns.md" in listed.output and "Shipping" in listed.output  # the HTML title

    found = run("search", "How much is express delivery?", "--k", "1")
    assert found.exit_code == 0, found.output
    assert "en/shipping.html" in found.output and "en/returns.md" not in found.output
    exact = run("search", "30 days", "--mode", "bm25", "--k", "1")
    assert "en/returns.md#1" in exact.output

    (docs / "en" / "returns.md").write_text("# Returns\n\nYou can return most items within 60 days.\n", "utf-8")
    updated = run("update", str(docs / "en" / "returns.md"), "--root", str(docs))
    assert updated.exit_code == 0, updated.output
    assert "updated" in updated.output and "│ 2 " in updated.output  # version 2

    removed = run("remove", "en/returns.md")
    assert removed.exit_code == 0 and "removed en/returns.md (version 2" in removed.output
    assert "en/returns.md" not in run("list").output


@pytest.mark.parametrize(
    "args, message",
    [
        (("remove", "nope.md"), "unknown document(s): nope.md"),
        (("search", "returns"), "is empty"),
        (("search", "returns", "--mode", "sparse"), "Invalid value for '--mode'"),
        (("add",), "Missing argument"),
        (("add", "missing.md"), "does not exist"),
    ],
)
def test_errors_on_an_empty_knowledge_base(run, args: tuple[str, ...], message: str):
    result = run(*args)
    assert result.exit_code != 0
    assert message in result.output


def test_file_errors_say_which_file_and_why(run, tmp_path: Path, docs: Path):
    (tmp_path / "empty.md").write_text("", "utf-8")
    (tmp_path / "notes.docx").write_bytes(b"PK")
    empty = run("add", str(tmp_path / "empty.md"))
    assert empty.exit_code == 1 and "empty.md: no text in it" in empty.output
    unsupported = run("add", str(tmp_path / "notes.docx"))
    assert unsupported.exit_code == 1 and "unsupported file type '.docx'" in unsupported.output
    unknown = run("update", str(docs / "en" / "returns.md"))
    assert unknown.exit_code == 1 and "unknown document(s): returns.md" in unknown.output
    assert "is empty" in run("list").output


def test_flywheel_has_the_kb_group():
    from deploy.cli import main

    assert main.commands["kb"] is kb_group
