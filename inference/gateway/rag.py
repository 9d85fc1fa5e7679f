"""Retrieval-augmented answers: the gateway looks the question up in the knowledge base (inference/retrieval) and
gives the model the passages it found, for the aliases marked `rag` (FLYWHEEL_GATEWAY_RAG_ALIASES).

Reads:  the knowledge base directory (FLYWHEEL_KB_DIR), in a pool of processes of its own: embedding a query and
        searching FAISS and BM25 is CPU work (about 10 ms) that must not hold the event loop, and in processes it
        does not contend for the gateway's GIL either. Each lookup first checks the knowledge base's generation on
        disk (`flywheel kb add|update|remove` in another process): an updated document is searched at once.
Writes: a `Retrieval` event per lookup (retrieval.queries: query, passages, scores, latency); the answer's sources
        go into the response (`sources`, an extra field the official client ignores), its ChatResponse event and
        a Redis key per message (`flywheel:message-sources:<message_id>`), which /feedback reads to name the
        passages the answer used.

The passages become a system message before the conversation (merged into the client's own system message), and
that is the prompt recorded in the ChatRequest event: pairs made from a `rag` answer keep the passages, so training
teaches the model to answer from them. A lookup that fails or times out leaves the question unaugmented (the
answer goes on, the Retrieval event says why).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import orjson

from schemas.events import MAX_SOURCES, Retrieval

log = logging.getLogger(__name__)

SOURCES_KEY = "flywheel:message-sources:{message_id}"
INSTRUCTION = (
    "Answer the question from the sources below and cite the ones you use as [1], [2]. "
    "If they do not answer it, say that you do not know."
)
PASSAGE_CHARS = 1200  # one passage in the prompt at most (a chunk is 600 characters by default)


@dataclass(frozen=True)
class Passage:
    """A search hit as the gateway keeps it (the pool's processes send these back)."""

    document: str
    version: int
    passage: str
    score: float
    title: str
    text: str

    def source(self) -> dict:
        """The public form: in responses and events (the text stays in the prompt)."""
        return {
            "document": self.document,
            "version": self.version,
            "passage": self.passage,
            "score": round(self.score, 6),
            "title": self.title,
        }


@dataclass
class Lookup:
    passages: list[Passage]
    latency_ms: float
    error: str | None = None


def knowledge_base_dir() -> Path:
    """FLYWHEEL_KB_DIR, or the data directory's `kb` (where `flywheel kb add` writes)."""
    from inference.retrieval.settings import RetrievalSettings

    settings = RetrievalSettings()
    return Path(settings.kb_dir) if settings.kb_dir else settings.data_dir / "kb"


# -- the pool's side -------------------------------------------------------------------------------

_KB = None


def _open(kb_dir: str) -> None:
    global _KB
    import faiss
    import torch

    from inference.retrieval import KnowledgeBase

    # One lookup at a time per process, on one thread: with torch's default of one thread per core, on cores shared
    # with the model server, every parallel region waited for a preempted thread, and lookups fell behind the
    # questions (4 a second on 2 cores: 99% timed out).
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    _KB = KnowledgeBase.open(Path(kb_dir))
    _KB.search("warm up", k=1)  # load the embedding model now, not on the first user's question


def _search(query: str, k: int, mode: str, deadline: float = float("inf")) -> list[Passage]:
    """The top `k` passages; none once `deadline` (unix time) has passed: the gateway stopped waiting for this
    lookup, and working through such stale ones would make every later lookup late as well."""
    if time.time() > deadline:
        return []
    _KB.refresh()
    hits = _KB.search(query, k, mode)
    return [Passage(h.document, h.version, h.passage, float(h.score), h.title, h.text) for h in hits]


# -- the gateway's side ----------------------------------------------------------------------------


class Retriever:
    """Knowledge-base lookups for the `rag` aliases, in a process pool started with the gateway."""

    def __init__(self, kb_dir: Path, aliases, k: int, mode: str, processes: int, timeout_s: float):
        self.kb_dir, self.aliases, self.k, self.mode, self.timeout_s = kb_dir, frozenset(aliases), k, mode, timeout_s
        self.processes = processes
        # spawn: a fork of the running gateway would copy its event loop, sockets and threads
        self.pool = ProcessPoolExecutor(
            max_workers=processes, mp_context=get_context("spawn"), initializer=_open, initargs=(str(kb_dir),)
        )

    def serves(self, alias: str) -> bool:
        return alias in self.aliases

    async def lookup(self, query: str) -> Lookup:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self.pool, _search, query, self.k, self.mode, time.time() + self.timeout_s)
            passages = await asyncio.wait_for(future, self.timeout_s)
            error = None
        except TimeoutError:
            passages, error = [], f"retrieval took longer than {self.timeout_s} s"
            log.warning("retrieval timed out", extra={"timeout_s": self.timeout_s})
        except Exception as exc:  # a broken index or pool must not fail the answer; the event says why
            passages, error = [], f"retrieval failed: {exc!r}"
            log.warning("retrieval failed", extra={"error": repr(exc)})
        return Lookup(passages, (time.perf_counter() - started) * 1000, error)

    async def warm(self, timeout_s: float) -> None:
        """Start every process of the pool (each loads the embedding model and index) before the first question.
        Not a lookup: its timeout is for answers, and a load takes longer; a lookup that timed out here would
        leave the load running ahead of the first users' lookups, which would time out in turn."""
        loop = asyncio.get_running_loop()
        loads = [loop.run_in_executor(self.pool, _search, "warm up", 1, self.mode) for _ in range(self.processes)]
        try:
            await asyncio.wait_for(asyncio.gather(*loads), timeout_s)
        except Exception as exc:  # the gateway still answers, without passages; each lookup event says why
            log.error("knowledge base not usable", extra={"kb_dir": str(self.kb_dir), "error": repr(exc)})

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def grounded(messages: list[dict], passages: list[Passage]) -> list[dict]:
    """The conversation with the passages as (part of) its system message; unchanged without passages."""
    if not passages:
        return messages
    blocks = [f"[{i}] {p.title}\n{p.text[:PASSAGE_CHARS]}".strip() for i, p in enumerate(passages, start=1)]
    context = INSTRUCTION + "\n\n" + "\n\n".join(blocks)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + context}, *messages[1:]]
    return [{"role": "system", "content": context}, *messages]


def query_of(messages: list[dict]) -> str:
    """What to look up: the last user message."""
    for message in reversed(messages):
        if message["role"] == "user" and message["content"].strip():
            return message["content"]
    return ""


def retrieval_event(turn, query: str, lookup: Lookup, k: int, mode: str, mask) -> Retrieval:
    return Retrieval(
        session_id=turn.session_id,
        message_id=turn.message_id,
        user_id=turn.user_id,
        model_alias=turn.alias,
        model_version=turn.version,
        query=mask(query),
        retriever=mode,
        k=min(k, MAX_SOURCES),
        sources=[p.source() for p in lookup.passages],
        latency_ms=lookup.latency_ms,
        status="ok" if lookup.error is None else "error",
        error=lookup.error,
        producer="gateway",
    )


class Grounding:
    """A rag turn's steps in the gateway: look the question up, publish the Retrieval event, remember the answer's
    passage ids (Redis, for /feedback) and put the passages in the messages."""

    def __init__(self, retriever: Retriever, redis, ttl_s: int, publish: Callable, mask: Callable[[str], str]):
        self.retriever, self.redis, self.ttl_s, self.publish, self.mask = retriever, redis, ttl_s, publish, mask

    def serves(self, alias: str) -> bool:
        return self.retriever.serves(alias)

    async def augment(self, turn, messages: list[dict]) -> list[dict]:
        """The messages with the passages for the turn's question; the turn keeps its sources. A lookup that
        failed leaves the messages as they were."""
        retriever = self.retriever
        query = query_of(messages)
        lookup = await retriever.lookup(query) if query else Lookup([], 0.0, "no user message to look up")
        turn.sources = [p.source() for p in lookup.passages]
        self.publish(retrieval_event(turn, query, lookup, retriever.k, retriever.mode, self.mask))
        if turn.sources:
            passage_ids = orjson.dumps([s["passage"] for s in turn.sources])
            await self.redis.set(SOURCES_KEY.format(message_id=turn.message_id), passage_ids, ex=self.ttl_s)
        return grounded(messages, lookup.passages)

    async def passages_of(self, message_id: str) -> list[str]:
        raw = await self.redis.get(SOURCES_KEY.format(message_id=message_id))
        return orjson.loads(raw) if raw else []
