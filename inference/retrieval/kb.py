"""The knowledge base: documents split into passages, searched by meaning and by words, versioned on disk.

    kb = KnowledgeBase.open()                         # <data_dir>/kb, or FLYWHEEL_KB_DIR; empty if missing
    kb.add([Path("inference/retrieval/examples/shop")])  # ids en/returns.md, zh/returns.md, ...
    kb.search("Can I return a used pan?", k=4)        # [Hit(document="en/returns.md", version=1, ...), ...]
    kb.refresh()                                      # True when another process wrote a new generation

Reads the documents it is given; writes the knowledge base directory (store.py: one generation per change,
switched atomically). Only the passages of new or changed documents are embedded; the others' vectors are read
back from the current generation.

Modes: "hybrid" fuses the dense and the BM25 rankings by reciprocal rank fusion (index.py), except for a question
in Chinese (Japanese, Korean) while the embedding model reads English only (FLYWHEEL_KB_MULTILINGUAL_EMBEDDING):
BM25 alone ranks it; "dense" and "bm25" are each alone, always. A hit's score is the fused score, the cosine or
the BM25 score; with a reranker (FLYWHEEL_KB_RERANKER_MODEL), the cross-encoder's score: it reorders the best
RERANK_DEPTH passages of the mode.

Thread safety: a search reads one immutable snapshot (generation and index) and needs no lock; writes and reloads
take the instance's lock and swap the snapshot when done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from inference.retrieval import documents, models, store
from inference.retrieval.errors import DocumentError, KnowledgeBaseError, UnknownDocumentError
from inference.retrieval.index import CANDIDATES, Passage, SearchIndex, reciprocal_rank_fusion
from inference.retrieval.settings import RetrievalSettings
from inference.retrieval.splitting import split_passages
from inference.retrieval.store import DocumentInfo, Generation
from inference.retrieval.tokens import has_cjk, tokenize

MODES = ("hybrid", "dense", "bm25")
RERANK_DEPTH = 20  # passages the cross-encoder reads per question: 20 pairs of ~150 tokens


@dataclass(frozen=True)
class Hit:
    document: str
    version: int
    passage: str  # "<document>#<n>"
    score: float
    title: str
    text: str


@dataclass(frozen=True)
class _Snapshot:
    generation: Generation
    index: SearchIndex | None  # None while there are no passages


def indexed_text(title: str, text: str) -> str:
    """What is embedded and tokenized for a passage: its document's title, then its text. A passage from the middle
    of a page ("Both hold 1.7 liters") may say what it is about only through the title ("Products"). On the shop's
    pages, whose sections have headings of their own, it moves hybrid MRR@10 by less than 0.01."""
    return f"{title}\n\n{text}"


class KnowledgeBase:
    def __init__(self, path: Path, settings: RetrievalSettings | None = None, stopwords: bool = True):
        self.path = Path(path)
        self.settings = settings or RetrievalSettings()
        self.stopwords = stopwords
        self._snapshot = _Snapshot(Generation(0), None)
        self._lock = threading.Lock()  # one writer or loader per instance

    @classmethod
    def open(cls, path: Path | str | None = None, settings: RetrievalSettings | None = None) -> KnowledgeBase:
        """The knowledge base in `path` (default: the setting), loaded; empty when the directory is missing."""
        settings = settings or RetrievalSettings()
        kb = cls(Path(path) if path is not None else settings.kb_path, settings)
        kb.refresh()
        return kb

    @property
    def generation(self) -> int:
        return self._snapshot.generation.number

    def documents(self) -> list[DocumentInfo]:
        return sorted(self._snapshot.generation.documents.values(), key=lambda info: info.document)

    def refresh(self) -> bool:
        """Load the current generation if another writer changed it; True when something was loaded."""
        if store.current_generation(self.path) == self.generation:
            return False
        with self._lock:
            if store.current_generation(self.path) == self.generation:
                return False  # loaded by another thread meanwhile
            self._install(store.read(self.path))
        return True

    # -- writes ------------------------------------------------------------------------------------------

    def add(
        self,
        paths: Iterable[Path | str],
        chunk_size: int | None = None,
        overlap: int | None = None,
        root: Path | str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[DocumentInfo]:
        """Add the documents in `paths` (files, or directories read recursively); a document already there is
        updated. Returns each document's info, in the order found. `progress(done, total)` while embedding."""
        return self._put(paths, chunk_size, overlap, root, progress, known_only=False)

    def update(
        self,
        paths: Iterable[Path | str],
        chunk_size: int | None = None,
        overlap: int | None = None,
        root: Path | str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[DocumentInfo]:
        """Read the documents in `paths` again: changed content is version + 1, unchanged content keeps its
        version. Every document must be in the knowledge base already (UnknownDocumentError)."""
        return self._put(paths, chunk_size, overlap, root, progress, known_only=True)

    def remove(self, document_ids: Iterable[str]) -> list[DocumentInfo]:
        """Remove documents by id; all or none (UnknownDocumentError). Returns what was removed."""
        wanted = list(dict.fromkeys([document_ids] if isinstance(document_ids, str) else document_ids))
        with self._writing() as current:
            _check_known(wanted, current)
            gone = [current.documents[d] for d in wanted]
            keep = [i for i, p in enumerate(current.passages) if p.document not in wanted]
            self._commit(
                current,
                {d: info for d, info in current.documents.items() if d not in wanted},
                {**current.removed, **{info.document: info.version for info in gone}},
                [current.passages[i] for i in keep],
                current.vectors[keep] if len(current.vectors) else current.vectors,
            )
        return gone

    def _put(self, paths, chunk_size, overlap, root, progress, known_only: bool) -> list[DocumentInfo]:
        paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
        found = documents.collect(paths, Path(root) if root is not None else None)
        if not found:
            raise DocumentError(f"no supported files in {', '.join(map(str, paths))}")
        loaded = [documents.load(path, doc_id) for path, doc_id in found]  # all read before anything changes
        with self._writing() as current:
            if known_only:
                _check_known([doc.id for doc in loaded], current)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            infos: list[DocumentInfo] = []
            fresh: list[Passage] = []
            for doc in loaded:
                old = current.documents.get(doc.id)
                # A document keeps its own splitting unless the caller names one.
                size = chunk_size or (old.chunk_size if old else self.settings.kb_chunk_size)
                repeat = overlap if overlap is not None else (old.overlap if old else self.settings.kb_chunk_overlap)
                if not 0 <= repeat < size:
                    raise KnowledgeBaseError(f"overlap must be at least 0 and less than the chunk size ({size})")
                if old is not None and (old.sha256, old.chunk_size, old.overlap) == (doc.sha256, size, repeat):
                    infos.append(old)
                    continue
                if old is None:
                    version, added = current.removed.get(doc.id, 0) + 1, now
                else:
                    version, added = old.version + (old.sha256 != doc.sha256), old.added
                texts = split_passages(doc.text, size, repeat)
                ids = tuple(f"{doc.id}#{n}" for n in range(1, len(texts) + 1))
                source = str(doc.source)
                info = DocumentInfo(doc.id, version, doc.title, source, doc.sha256, ids, added, now, size, repeat)
                infos.append(info)
                fresh += [
                    Passage(i, doc.id, t, tuple(tokenize(indexed_text(doc.title, t))))
                    for i, t in zip(ids, texts, strict=True)
                ]
            changed = {info.document: info for info in infos if info is not current.documents.get(info.document)}
            if not changed:
                return infos
            embedder = self._embedder()
            if len(current.passages) and current.vectors.shape[1] != embedder.dimension:
                raise KnowledgeBaseError(
                    f"{self.path} holds {current.vectors.shape[1]}-dimensional vectors of {current.embedding_model}; "
                    f"{embedder.model_dir} gives {embedder.dimension}: rebuild the knowledge base in a new directory"
                )
            titles = {info.document: info.title for info in changed.values()}
            vectors = embedder.encode([indexed_text(titles[p.document], p.text) for p in fresh], progress)
            keep = [i for i, p in enumerate(current.passages) if p.document not in changed]
            old_vectors = current.vectors[keep] if keep else np.empty((0, embedder.dimension), dtype=np.float32)
            self._commit(
                current,
                {**current.documents, **changed},
                {d: v for d, v in current.removed.items() if d not in changed},
                [current.passages[i] for i in keep] + fresh,
                np.concatenate([old_vectors, vectors]),
            )
        return infos

    @contextmanager
    def _writing(self) -> Iterator[Generation]:
        """Hold the instance's lock and the directory's, with the latest generation loaded."""
        with self._lock, store.write_lock(self.path):
            if store.current_generation(self.path) != self.generation:
                self._install(store.read(self.path))
            yield self._snapshot.generation

    def _commit(self, current: Generation, docs, removed, passages: list[Passage], vectors: np.ndarray) -> None:
        model = str(self.settings.embedding_model_dir) if passages else ""
        generation = Generation(current.number + 1, docs, removed, tuple(passages), vectors, model)
        store.write(self.path, generation)
        self._install(generation)

    def _install(self, generation: Generation) -> None:
        index = SearchIndex(generation.passages, generation.vectors, self.stopwords) if generation.passages else None
        self._snapshot = _Snapshot(generation, index)

    # -- search ------------------------------------------------------------------------------------------

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The `k` best passages for `query`, best first; [] for an empty knowledge base or query."""
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r} (one of {', '.join(MODES)})")
        snapshot = self._snapshot
        if snapshot.index is None or k <= 0 or not query.strip():
            return []
        reranking = self.settings.kb_reranker_model is not None
        depth = max(k, CANDIDATES if mode == "hybrid" else 0, RERANK_DEPTH if reranking else 0)
        readable = self.settings.kb_multilingual_embedding or not has_cjk(query)
        dense_wanted = mode == "dense" or (mode == "hybrid" and readable)
        dense = snapshot.index.dense(self._embed_query(query), depth) if dense_wanted else []
        bm25 = snapshot.index.bm25(tokenize(query), depth) if mode != "dense" else []
        if mode == "hybrid":
            ranked = reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in bm25]])
        else:
            ranked = dense or bm25
        if reranking:
            ranked = self._rerank(query, snapshot.index.passages, ranked[:RERANK_DEPTH])
        return [_hit(snapshot.generation, snapshot.index.passages[i], score) for i, score in ranked[:k]]

    def _embed_query(self, query: str) -> np.ndarray:
        return self._embedder().encode([query])[0]

    def _rerank(self, query: str, passages: Sequence[Passage], ranked: list[tuple[int, float]]):
        model = models.reranker(self.settings.kb_reranker_model)
        scores = model.scores(query, [passages[i].text for i, _ in ranked])
        order = sorted(range(len(ranked)), key=lambda j: (-scores[j], j))  # equal scores keep the mode's order
        return [(ranked[j][0], float(scores[j])) for j in order]

    def _embedder(self) -> models.Embedder:
        return models.embedder(self.settings.embedding_model_dir)


def _hit(generation: Generation, passage: Passage, score: float) -> Hit:
    info = generation.documents[passage.document]
    return Hit(passage.document, info.version, passage.id, score, info.title, passage.text)


def _check_known(document_ids: Sequence[str], current: Generation) -> None:
    unknown = [d for d in document_ids if d not in current.documents]
    if unknown:
        raise UnknownDocumentError(f"unknown document(s): {', '.join(unknown)}")
