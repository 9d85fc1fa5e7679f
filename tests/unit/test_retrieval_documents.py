"""Files into documents: each loader's text and title, document ids, and the files refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inference.retrieval.documents import collect, load
from inference.retrieval.errors import DocumentError


def tiny_pdf(pages: list[str]) -> bytes:
    """A valid PDF with one line of Helvetica text per page, written by hand (objects, xref table, trailer)."""
    count = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(count))
    font = 3 + 2 * count
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode()]
    for i, text in enumerate(pages):
        page = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects += [page.encode(), b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content)]
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def test_markdown_title_is_the_first_heading(tmp_path: Path):
    path = tmp_path / "returns.md"
    path.write_text("Intro line.\n\n## Returns policy ##\n\nYou can return most items.\n\n# Later\n", encoding="utf-8")
    doc = load(path)
    assert (doc.id, doc.title) == ("returns.md", "Returns policy")
    assert doc.text.startswith("Intro line.") and "You can return most items." in doc.text
    assert doc.source == path.resolve()


def test_markdown_without_heading_and_text_files_take_the_stem(tmp_path: Path):
    (tmp_path / "notes.md").write_text("just text", encoding="utf-8")
    (tmp_path / "faq.txt").write_text("\ufeffQ: hours?\nA: 9 to 6.\n", encoding="utf-8")  # a byte-order mark
    assert load(tmp_path / "notes.md").title == "notes"
    doc = load(tmp_path / "faq.txt")
    assert (doc.title, doc.text) == ("faq", "Q: hours?\nA: 9 to 6.")


def test_html_text_without_scripts_and_styles(tmp_path: Path):
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>Returns\n  policy</title><style>p { color: red }</style></head><body>"
        "<script>var secret = 1;</script><h1>Returns</h1><p>You can return   most items\nwithin "
        "<b>30 days</b>.</p><ul><li>Free in the US</li><li>$10 from Canada</li></ul>"
        "<div>Line one<br>Line two</div><noscript>enable scripts</noscript></body></html>",
        encoding="utf-8",
    )
    doc = load(path)
    assert doc.title == "Returns policy"
    blocks = ["Returns", "You can return most items within 30 days.", "Free in the US", "$10 from Canada"]
    assert doc.text == "\n\n".join([*blocks, "Line one\nLine two"])


def test_html_without_title_takes_the_stem(tmp_path: Path):
    (tmp_path / "shipping.htm").write_text("<p>Ships in 3 days.</p>", encoding="utf-8")
    doc = load(tmp_path / "shipping.htm")
    assert (doc.title, doc.text) == ("shipping", "Ships in 3 days.")


def test_pdf_text_of_every_page(tmp_path: Path):
    path = tmp_path / "warranty.pdf"
    path.write_bytes(tiny_pdf(["Kettles have a two-year warranty.", "Furniture frames: five years."]))
    doc = load(path)
    assert doc.title == "warranty"
    assert doc.text == "Kettles have a two-year warranty.\n\nFurniture frames: five years."


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.md", b"", "no text"),
        ("blank.txt", b" \n\n \t\n", "no text"),
        ("empty.html", b"<html><head><title>t</title></head><body><script>x()</script></body></html>", "no text"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
        ("broken.pdf", b"%PDF-1.4 this is not a PDF", "PDF"),
        ("notes.docx", b"PK", "unsupported file type '.docx'"),
        ("README", b"text", "unsupported file type '(none)'"),
    ],
)
def test_files_refused_with_the_reason(tmp_path: Path, name: str, content: bytes, message: str):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=re.escape(message)):
        load(path)


def test_collect_ids_relative_to_a_directory_or_a_root(tmp_path: Path):
    for name in ("en/returns.md", "zh/returns.md", "en/skip.docx", "en/deep/faq.txt"):
        (tmp_path / "kb" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "kb" / name).write_text("x", encoding="utf-8")
    found = collect([tmp_path / "kb"])
    assert [doc_id for _, doc_id in found] == ["en/deep/faq.txt", "en/returns.md", "zh/returns.md"]
    assert collect([tmp_path / "kb" / "en" / "returns.md"])[0][1] == "returns.md"
    assert collect([tmp_path / "kb" / "en" / "returns.md"], root=tmp_path)[0][1] == "kb/en/returns.md"


@pytest.mark.parametrize(
    "paths, root, message",
    [
        (["kb/en/returns.md", "kb/zh/returns.md"], None, "would both be document 'returns.md'"),
        (["kb/en/returns.md"], "elsewhere", "is not under the root"),
        (["kb/missing.md"], None, "no such file"),
        (["kb/en/skip.docx"], None, "unsupported file type"),
    ],
)
def test_collect_refuses(tmp_path: Path, paths: list[str], root: str | None, message: str):
    for name in ("en/returns.md", "zh/returns.md", "en/skip.docx"):
        (tmp_path / "kb" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "kb" / name).write_text("x", encoding="utf-8")
    with pytest.raises(DocumentError, match=message):
        collect([tmp_path / p for p in paths], root=tmp_path / root if root else None)
