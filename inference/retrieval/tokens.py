"""Search tokens for BM25: lowercased Latin words and numbers, jieba's words for Chinese, Japanese and Korean runs.

The embedding model (all-MiniLM-L6-v2) was trained on English only; BM25 over these tokens is what finds Chinese
questions and exact terms: an order number, a product name, a price ("5.95" stays one token).

- Chinese has no spaces: jieba segments each CJK run in its search mode, which adds the shorter words inside a long
  one (电水壶 -> 水壶, 电水壶), so "水壶" in a question meets "电水壶" in a passage.
- English plurals meet their singulars through Harman's S-stemmer (1991): "pans" -> "pan", "policies" -> "policy".
  It only undoes plural endings, so it rarely merges words of different meaning, which a full stemmer does.
- English stopwords (the index drops them when asked, as kb.py does) are NLTK's 179, which bm25s ships. Questions
  are full of "how", "can", "my", "you", whose idf is not near zero in a small knowledge base: BM25's MRR@10 on
  the shop's English questions is 0.77 with none, 0.78 with bm25s's short list of 33, 0.81 with these.

retrain/data/text.py segments text the same way for its statistics; inference may not import retrain, and these
tokens differ (search mode, whole decimal numbers, plurals), so they have their own home here.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK_RUN = re.compile(rf"[{CJK}]+")
# A number with its decimal or thousands parts ("5.95", "1,299"), or a run of letters and digits.
_LATIN = re.compile(rf"\d+(?:[.,]\d+)+|[^\W_{CJK}]+")


def tokenize(text: str) -> list[str]:
    """The BM25 tokens of `text`, in text order (a word inside a longer Chinese word comes after it, as jieba
    gives them)."""
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    position = 0
    for run in _CJK_RUN.finditer(text):
        out.extend(_latin(text[position : run.start()]))
        out.extend(_segment(run.group()))
        position = run.end()
    out.extend(_latin(text[position:]))
    return out


@cache
def stopwords() -> frozenset[str]:
    """English stopwords as tokens: stemmed like them ("this" -> "thi"), split at apostrophes like them."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(t for word in STOPWORDS_EN_PLUS for t in tokenize(word))


def has_cjk(text: str) -> bool:
    return _CJK_RUN.search(text) is not None


def _latin(text: str) -> list[str]:
    return [s_stem(word) for word in _LATIN.findall(text)]


def s_stem(word: str) -> str:
    """Harman's S-stemmer: -ies -> -y, -es -> -e, -s -> '' (with its exceptions); other words unchanged."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def _segment(run: str) -> list[str]:
    import jieba  # imported on first Chinese text: loading its dictionary takes about a second

    jieba.setLogLevel(60)  # no "Building prefix dict" lines on stderr
    return jieba.lcut_for_search(run)
