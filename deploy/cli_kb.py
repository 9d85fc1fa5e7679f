"""`flywheel kb`: the knowledge base of retrieval-augmented answers (inference/retrieval).

Reads Markdown, text, HTML and PDF files; writes the knowledge base directory (FLYWHEEL_KB_DIR, default
<data_dir>/kb), where the gateway's `KnowledgeBase.refresh()` sees each change.

    flywheel kb add inference/retrieval/examples/shop      # ids en/returns.md, zh/returns.md, ...
    flywheel kb add policies/ --chunk-size 800 --overlap 100
    flywheel kb update inference/retrieval/examples/shop/en/returns.md --root inference/retrieval/examples/shop
    flywheel kb search "Can I return a used pan?" --k 4 --mode hybrid
    flywheel kb list
    flywheel kb remove en/returns.md
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
MODES = ("hybrid", "dense", "bm25")
SHOWN_TEXT = 240  # characters of a passage shown per search hit


def _open():
    from inference.retrieval import KnowledgeBase
    from inference.retrieval.settings import RetrievalSettings

    return KnowledgeBase.open(settings=RetrievalSettings())


def _quiet_model_loading() -> None:
    """No "Loading weights" bar from transformers between our own lines (a process-wide switch: the CLI's call)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


@click.group("kb")
def kb_group() -> None:
    """Knowledge base for retrieval-augmented answers: add, update, remove, list and search documents."""


def _document_options(command):
    command = click.option(
        "--root",
        type=click.Path(file_okay=False, path_type=Path),
        help="Document ids are paths relative to ROOT (default: a directory's own path, a file's name).",
    )(command)
    command = click.option(
        "--overlap",
        type=click.IntRange(min=0),
        help="Characters repeated across a cut inside a paragraph (default: FLYWHEEL_KB_CHUNK_OVERLAP).",
    )(command)
    command = click.option(
        "--chunk-size",
        type=click.IntRange(min=50),
        help="Passage size in characters (default: FLYWHEEL_KB_CHUNK_SIZE).",
    )(command)
    return click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))(command)


@kb_group.command("add")
@_document_options
def add_command(paths: tuple[Path, ...], chunk_size: int | None, overlap: int | None, root: Path | None) -> None:
    """Add the documents in PATHS (files, or directories searched for .md .txt .html .pdf); a document already in
    the knowledge base is updated."""
    _put("add", paths, chunk_size, overlap, root)


@kb_group.command("update")
@_document_options
def update_command(paths: tuple[Path, ...], chunk_size: int | None, overlap: int | None, root: Path | None) -> None:
    """Read documents of the knowledge base again: changed content gets the next version, unchanged keeps it."""
    _put("update", paths, chunk_size, overlap, root)


def _put(action: str, paths, chunk_size, overlap, root) -> None:
    from inference.retrieval import KnowledgeBaseError

    kb = _open()
    before = {info.document: info for info in kb.documents()}
    _quiet_model_loading()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("reading documents", total=None)

        def embedded(done: int, total: int) -> None:
            progress.update(task, description="embedding passages", completed=done, total=total)

        try:
            infos = getattr(kb, action)(paths, chunk_size=chunk_size, overlap=overlap, root=root, progress=embedded)
        except KnowledgeBaseError as exc:
            raise click.ClickException(str(exc)) from None
    table = Table("document", "version", "passages", "title", "change", title=f"knowledge base {kb.path}")
    for info in infos:
        old = before.get(info.document)
        if old is None:
            change = "added"
        elif old.sha256 != info.sha256:
            change = "updated"
        elif (info.chunk_size, info.overlap) != (old.chunk_size, old.overlap):
            change = "split again"
        else:
            change = "unchanged"
        table.add_row(info.document, str(info.version), str(len(info.passages)), info.title, change)
    console.print(table)


@kb_group.command("remove")
@click.argument("documents", nargs=-1, required=True)
def remove_command(documents: tuple[str, ...]) -> None:
    """Remove DOCUMENTS (ids as `flywheel kb list` shows them); none is removed if one is unknown."""
    from inference.retrieval import KnowledgeBaseError

    kb = _open()
    try:
        removed = kb.remove(documents)
    except KnowledgeBaseError as exc:
        raise click.ClickException(f"{exc} (see `flywheel kb list`)") from None
    for info in removed:
        console.print(f"removed {info.document} (version {info.version}, {len(info.passages)} passages)")


@kb_group.command("list")
def list_command() -> None:
    """The documents: id, version, passages, title, when added and last updated (UTC)."""
    kb = _open()
    infos = kb.documents()
    if not infos:
        console.print(f"the knowledge base at {kb.path} is empty: add documents with `flywheel kb add PATH`")
        return
    table = Table(title=f"knowledge base {kb.path}")
    for column in ("document", "version", "passages", "title", "added", "updated"):
        table.add_column(column, no_wrap=column in ("version", "passages"), overflow="fold")
    for info in infos:
        times = (info.added[:16].replace("T", " "), info.updated[:16].replace("T", " "))
        table.add_row(info.document, str(info.version), str(len(info.passages)), info.title, *times)
    console.print(table)


@kb_group.command("search")
@click.argument("query")
@click.option("--k", type=click.IntRange(min=1), help="Passages to show (default: FLYWHEEL_KB_TOP_K).")
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True, help="Ranking.")
def search_command(query: str, k: int | None, mode: str) -> None:
    """The passages that best answer QUERY, best first, with their document and version."""
    kb = _open()
    if not kb.documents():
        raise click.ClickException(f"the knowledge base at {kb.path} is empty: add documents with `flywheel kb add`")
    if mode != "bm25":
        _quiet_model_loading()
    hits = kb.search(query, k=k or kb.settings.kb_top_k, mode=mode)
    if not hits:
        console.print("no passage matches")
        return
    table = Table("#", "score", "document", "version", "passage", title=f"{mode} search: {query}")
    table.add_column("text", overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit.text.split())
        text = text if len(text) <= SHOWN_TEXT else text[: SHOWN_TEXT - 1] + "…"
        table.add_row(str(rank), f"{hit.score:.4f}", hit.document, str(hit.version), hit.passage, text)
    console.print(table)
