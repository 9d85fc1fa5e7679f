"""Text units that work for Chinese as well as English: Chinese has no spaces between words.

- `tokens`: lowercased Latin words and numbers, and each CJK character alone (ROUGE-L, n-gram counts);
- `words`: Latin words and jieba's segmentation of CJK runs (word counts, frequent words);
- `shingles`: overlapping character n-grams of the normalized text (near-duplicate detection).

Why jieba: the most used Chinese segmenter, dictionary-based, pure Python, no model download.
"""

from __future__ import annotations

import re
import unicodedata

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# A CJK ideograph, kana or hangul syllable is a token by itself; any other run of letters/digits is a word.
TOKEN = re.compile(rf"[{CJK}]|[^\W_{CJK}]+")
_CJK_RUN = re.compile(rf"[{CJK}]+")
_LATIN_WORD = re.compile(rf"[^\W_{CJK}]+")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC (full-width letters and digits to ASCII), lowercased, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def tokens(text: str) -> list[str]:
    return TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def has_cjk(text: str) -> bool:
    return _CJK_RUN.search(text) is not None


def words(text: str) -> list[str]:
    """Latin words and numbers as they stand, CJK runs segmented into words by jieba; in text order."""
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    position = 0
    for run in _CJK_RUN.finditer(text):
        out.extend(_LATIN_WORD.findall(text[position : run.start()]))
        out.extend(w for w in _segment(run.group()) if w.strip())
        position = run.end()
    out.extend(_LATIN_WORD.findall(text[position:]))
    return out


def _segment(run: str) -> list[str]:
    import jieba  # imported on first Chinese text: loading its dictionary takes about a second

    jieba.setLogLevel(60)  # no "Building prefix dict" lines on stderr
    return jieba.lcut(run)


def shingles(text: str, n: int = 3) -> set[str]:
    """Character n-grams of the normalized text (spaces kept): fit Chinese and English alike."""
    text = normalize(text)
    if len(text) <= n:
        return {text} if text else set()
    return {text[i : i + n] for i in range(len(text) - n + 1)}
