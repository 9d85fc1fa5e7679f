"""Files into documents: Markdown, plain text, HTML and PDF, each read into its text and title.

Reads the files it is given (never writes). A document's id is its path relative to a root, with / separators:
the root the caller names, else the directory being added (`kb add docs/` gives `en/returns.md`), else none (a file
named alone is its file name). Its title is the first Markdown heading, the HTML <title>, else the file stem.

- Markdown and text: UTF-8 (a byte-order mark is dropped), kept as written: passages quote the source.
- HTML: the text of the page (BeautifulSoup); scripts, styles and the <head> dropped, whitespace collapsed as a
  browser does, block elements (p, li, h1-h6, div, tr, ...) separated by blank lines so the splitter sees paragraphs.
- PDF: pypdf's text of each page, pages separated by blank lines. A scanned PDF has no text layer: it is refused
  as empty, since recognizing text in images is not done here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from inference.retrieval.errors import DocumentError

KINDS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_BLOCKS = (
    "address article aside blockquote caption dd div dl dt figcaption figure footer form h1 h2 h3 h4 h5 h6 header "
    "hr li main nav ol p pre section table td th tr ul"
).split()
# Placeholders from Unicode's private use area: they survive the collapse of whitespace (the ASCII separators
# \x1e and \x1f would not: Python counts them as whitespace).
_PARAGRAPH = "\ue000"
_LINE = "\ue001"


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    source: Path  # absolute

    @property
    def sha256(self) -> str:
        """The hash of what retrieval sees (title and text): a change of markup alone is no new version."""
        return hashlib.sha256(f"{self.title}\0{self.text}".encode()).hexdigest()


def collect(paths: Iterable[Path], root: Path | None = None) -> list[tuple[Path, str]]:
    """(file, document id) for each file named and each supported file under each directory named (recursively,
    sorted); a file named alone must be of a supported type. Raises DocumentError."""
    found: list[tuple[Path, str]] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in KINDS)
            found += [(f, document_id(f, root or path)) for f in files]
        elif path.is_file():
            kind(path)
            found.append((path, document_id(path, root)))
        else:
            raise DocumentError(f"{path}: no such file or directory")
    seen: dict[str, Path] = {}
    for path, doc_id in found:
        if seen.setdefault(doc_id, path) != path:
            raise DocumentError(f"{seen[doc_id]} and {path} would both be document {doc_id!r}: pass a root")
    return found


def document_id(path: Path, root: Path | None = None) -> str:
    if root is None:
        return path.name
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise DocumentError(f"{path} is not under the root {root}") from None


def kind(path: Path) -> str:
    try:
        return KINDS[path.suffix.lower()]
    except KeyError:
        supported = ", ".join(sorted(KINDS))
        suffix = path.suffix or "(none)"
        raise DocumentError(f"{path}: unsupported file type {suffix!r} (supported: {supported})") from None


def load(path: Path, doc_id: str | None = None) -> Document:
    """The document in `path` (id: `doc_id`, else the file name). Raises DocumentError."""
    reader = {"markdown": _markdown, "text": _plain, "html": _html, "pdf": _pdf}[kind(path)]
    try:
        title, text = reader(path)
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read: {exc.strerror or exc}") from None
    text = text.strip()
    if not text:
        raise DocumentError(f"{path}: no text in it")
    return Document(doc_id or path.name, " ".join(title.split()) or path.stem, text, path.resolve())


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _markdown(path: Path) -> tuple[str, str]:
    text = _decode(path)
    heading = _HEADING.search(text)
    return (heading.group(1) if heading else ""), text


def _plain(path: Path) -> tuple[str, str]:
    return "", _decode(path)


def _html(path: Path) -> tuple[str, str]:
    from bs4 import BeautifulSoup  # imported when an HTML file comes: most knowledge bases have none

    soup = BeautifulSoup(path.read_bytes(), "html.parser")  # bytes: it honours <meta charset>
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["head", "script", "style", "noscript", "template"]):
        tag.decompose()
    for tag in soup.find_all("br"):
        tag.replace_with(_LINE)
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before(_PARAGRAPH)
        tag.insert_after(_PARAGRAPH)
    text = re.sub(r"\s+", " ", soup.get_text())
    text = re.sub(rf"\s*{_LINE}\s*", "\n", text)
    text = re.sub(rf"\s*{_PARAGRAPH}[\s{_PARAGRAPH}]*", "\n\n", text)
    return title, text


def _pdf(path: Path) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except PdfReadError as exc:
        raise DocumentError(f"{path}: not a readable PDF ({exc})") from None
    return "", "\n\n".join(page.strip() for page in pages if page.strip())
