"""The knowledge base's two models, each loaded once per process on first use: the embedder and the reranker.

Both are local sentence-transformers directories on the CPU (`local_files_only`: a wrong path is an error here,
never a download). all-MiniLM-L6-v2, the default embedder, loads in about 3.5 s with torch's import (paid by the
first search or write of a process), then embeds a question in about 6 ms on 2 cores; passages of up to 600
characters go at about 60 a second (10,700 in 175 s, bench/retrieval.py), which is why the knowledge base keeps
vectors and embeds only new or changed passages.

One lock per model: Hugging Face fast tokenizers refuse to be used by two threads at once ("Already borrowed"), and
a query takes milliseconds, so searches from worker threads take turns here and run in parallel everywhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from inference.retrieval.errors import KnowledgeBaseError

BATCH = 32  # passages per forward pass: the progress callback is called after each

_loading = threading.Lock()
_embedders: dict[Path, Embedder] = {}
_rerankers: dict[Path, Reranker] = {}


class Embedder:
    """Normalized sentence embeddings (float32), so that inner product is cosine similarity."""

    def __init__(self, model_dir: Path):
        from sentence_transformers import SentenceTransformer

        self.model_dir = model_dir
        self._model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        self.dimension = int(self._model.get_embedding_dimension())
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """One row per text; `progress(done, total)` after each batch."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for first in range(0, len(texts), BATCH):
            batch = list(texts[first : first + BATCH])
            with self._lock:
                out[first : first + len(batch)] = self._model.encode(
                    batch, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                )
            if progress is not None:
                progress(first + len(batch), len(texts))
        return out


class Reranker:
    """A cross-encoder: one relevance score per (question, passage) pair, higher is better."""

    def __init__(self, model_dir: Path):
        from sentence_transformers import CrossEncoder

        self.model_dir = model_dir
        self._model = CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
        self._lock = threading.Lock()

    def scores(self, question: str, passages: Sequence[str]) -> np.ndarray:
        if not passages:
            return np.empty(0, dtype=np.float32)
        with self._lock:
            found = self._model.predict([(question, p) for p in passages], batch_size=BATCH, show_progress_bar=False)
        return np.asarray(found, dtype=np.float32).reshape(len(passages))


def embedder(model_dir: Path) -> Embedder:
    return _cached(_embedders, Embedder, model_dir)


def reranker(model_dir: Path) -> Reranker:
    return _cached(_rerankers, Reranker, model_dir)


def _cached(cache: dict, cls: type, model_dir: Path):
    model_dir = Path(model_dir).resolve()
    found = cache.get(model_dir)
    if found is not None:
        return found
    with _loading:
        if model_dir not in cache:
            if not (model_dir / "config.json").is_file():
                raise KnowledgeBaseError(f"{model_dir} is not a model directory (no config.json)")
            cache[model_dir] = cls(model_dir)
        return cache[model_dir]
