"""Search over one generation of passages: FAISS inner product over their vectors, BM25 over their tokens, fused.

Built in memory from what the knowledge base keeps on disk (vectors.npy, the passages' tokens) and never changed
afterwards: searches from several threads read it without a lock, and a new generation is a new index.

- Dense: `faiss.IndexFlatIP`, exact inner product over normalized vectors (= cosine). At 10,700 passages of 384
  dimensions a search takes about 0.7 ms on 2 cores, a tenth of embedding the question, so no approximate index
  is needed.
- BM25: bm25s (Lucene's variant, k1 = 1.5, b = 0.75) over our own tokens (tokens.py); passages that share no
  token with the question score 0 and are not hits.
- Fusion: reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): a passage scores the sum of
  1 / (K + rank) over the rankings it is in, rank 1 being the best. It needs no score normalization (cosines and
  BM25 scores are on unrelated scales) and no training. K = 60 is the paper's value, chosen there on TREC runs and
  kept by most systems since: it flattens the head of each ranking, so that a passage both rankings place well
  beats one that a single ranking places first (1/61 + 1/62 > 1/61 + nothing). Each ranking contributes its best
  CANDIDATES passages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference.retrieval.tokens import stopwords as tokens_stopwords

RRF_K = 60
CANDIDATES = 50


@dataclass(frozen=True)
class Passage:
    id: str  # "<document>#<n>", n from 1
    document: str
    text: str
    tokens: tuple[str, ...]  # BM25 tokens of the passage and its document's title, stopwords kept


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """(item, fused score), best first; ties go to the item with the better best rank, then the lower item."""
    scores: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best[item] = min(best.get(item, rank), rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], best[pair[0]], pair[0]))


class SearchIndex:
    """Dense and BM25 rankings over `passages`, whose vectors are the rows of `vectors` (normalized float32)."""

    def __init__(self, passages: Sequence[Passage], vectors: np.ndarray, stopwords: bool = False):
        import bm25s  # about 0.4 s to import, and faiss 0.2 s: paid when a knowledge base is loaded, not on import
        import faiss

        # bm25s sets its logger to DEBUG when imported: a line per index built in every service's log otherwise.
        logging.getLogger("bm25s").setLevel(logging.WARNING)

        if len(passages) != len(vectors):
            raise ValueError(f"{len(passages)} passages but {len(vectors)} vectors")
        self.passages = tuple(passages)
        self._stopwords = tokens_stopwords() if stopwords else frozenset()
        self._dense = faiss.IndexFlatIP(vectors.shape[1])
        self._dense.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._bm25 = bm25s.BM25()
        corpus = [[t for t in p.tokens if t not in self._stopwords] for p in self.passages]
        self._bm25.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return len(self.passages)

    def dense(self, vector: np.ndarray, n: int) -> list[tuple[int, float]]:
        """(passage position, cosine) of the `n` nearest passages, best first."""
        n = min(n, len(self.passages))
        if n <= 0:
            return []
        scores, positions = self._dense.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), n)
        return [(int(i), float(s)) for i, s in zip(positions[0], scores[0], strict=True) if i >= 0]

    def bm25(self, tokens: Sequence[str], n: int) -> list[tuple[int, float]]:
        """(passage position, BM25 score) of the `n` best passages with a score above 0, best first."""
        tokens = [t for t in tokens if t not in self._stopwords]
        if not tokens or n <= 0:
            return []
        scores = self._bm25.get_scores(tokens)
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.lexsort((top, -scores[top]))]  # best first; equal scores in passage order
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]
