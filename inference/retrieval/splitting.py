"""A document's text into passages of at most `size` characters, cut where the text allows.

    split_passages(text, size=600, overlap=80) -> ["first passage", "second passage", ...]

Where a passage may end, best first:
  0. a paragraph break (a blank line), unless the paragraph before it is a Markdown heading
  1. a sentence end: . ! ? followed by a space, or Chinese 。！？… (closing quotes and brackets stay with it)
  2. a clause mark (, ; : followed by a space, or Chinese ，、；：) or a line break: Markdown and text files are often
     wrapped at a fixed width, so a single line break says no more than a comma (in a list it ends an item)
  3. a space between two words (also a paragraph break right after a heading: the heading belongs to what follows)
  4. between two characters that are not both part of one Latin word or number: between Chinese characters
  5. anywhere: only a single word longer than `size` is cut inside
The best kind found in the second half of the window wins, at its latest place: passages stay near the size, and
a paragraph break at 55% beats a sentence end at 95%. Only when the second half has no place of kinds 0-3 does
the first half count.

Overlap: when a cut falls inside a paragraph, the next passage begins up to `overlap` characters before it, at the
earliest sentence start, else word start, in that stretch, so that the sentence cut off keeps some context. A cut
at a paragraph break repeats nothing: the next paragraph stands on its own.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right

from inference.retrieval.tokens import CJK

# (kind, pattern): a match's end is a place where a passage may end and the next one begin.
_PLACES = (
    (0, re.compile(r"\n[ \t]*\n\s*")),
    (1, re.compile(r"[.!?][\"'”’)\]]*\s+|[。！？…]+[\"'”’」』）)\]]*\s*")),
    (2, re.compile(r"[,;:]\s+|[，、；：]\s*|\n\s*")),
    (3, re.compile(r"\s+")),
)
_HEADING = re.compile(r"#{1,6}[ \t]")
_WORD_CHAR = re.compile(rf"[^\W_{CJK}]")
_KINDS = 4  # kinds 0-3 are found by pattern; 4 and 5 by looking at the two characters


def split_passages(text: str, size: int, overlap: int = 0) -> list[str]:
    """Passages of at most `size` characters (whitespace at their ends stripped), in text order."""
    if size < 1:
        raise ValueError(f"passage size must be positive, not {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be at least 0 and less than the size ({size}), not {overlap}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    places = _places(text)
    passages = []
    start = _skip_space(text, 0)
    while start < len(text):
        if len(text) - start <= size:
            end = len(text)
            kind = 0
        else:
            end, kind = _cut(text, places, start, size)
        passage = text[start:end].strip()
        if passage:
            passages.append(passage)
        following = end
        if overlap and kind > 0 and end < len(text):
            following = _overlap_start(text, places, start, end, overlap)
        start = _skip_space(text, following)
    return passages


def _places(text: str) -> list[list[int]]:
    """For each kind 0-3, the sorted places of that kind (a place may be listed under several kinds)."""
    places: list[list[int]] = [[] for _ in range(_KINDS)]
    for kind, pattern in _PLACES:
        for match in pattern.finditer(text):
            line = text.rfind("\n", 0, match.start()) + 1  # the line the place follows
            if kind == 0 and _HEADING.match(text, line):
                places[3].append(match.end())
            else:
                places[kind].append(match.end())
    for found in places:
        found.sort()
    return places


def _latest(found: list[int], lo: int, hi: int) -> int | None:
    """The last place in `found` with lo < place <= hi."""
    i = bisect_right(found, hi) - 1
    return found[i] if i >= 0 and found[i] > lo else None


def _earliest(found: list[int], lo: int, hi: int) -> int | None:
    """The first place in `found` with lo <= place < hi."""
    i = bisect_left(found, lo)
    return found[i] if i < len(found) and found[i] < hi else None


def _inside_word(text: str, at: int) -> bool:
    return bool(_WORD_CHAR.match(text, at - 1) and _WORD_CHAR.match(text, at))


def _cut(text: str, places: list[list[int]], start: int, size: int) -> tuple[int, int]:
    """Where the passage that begins at `start` ends, and the kind of place."""
    hi = start + size
    for lo in (start + size // 2, start):
        for kind in range(_KINDS):
            end = _latest(places[kind], lo, hi)
            if end is not None:
                return end, kind
    for end in range(hi, start, -1):
        if not _inside_word(text, end):
            return end, 4
    return hi, 5


def _overlap_start(text: str, places: list[list[int]], start: int, end: int, overlap: int) -> int:
    """Where the next passage begins: within the last `overlap` characters before `end`, at a sentence start,
    else a word start, else (Chinese) a character boundary; at `end` when there is none after `start`."""
    lo = max(end - overlap, start + 1)
    for kinds in ((0, 1), (2, 3)):
        found = [p for kind in kinds if (p := _earliest(places[kind], lo, end)) is not None]
        if found:
            return min(found)
    for at in range(lo, end):
        if not _inside_word(text, at):
            return at
    return end


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at
