"""Pure logic of DPO pair building: question normalization, PII masking, quality and near-duplicate filters.

No I/O here: the agents in streams/pairs.py call these functions and send what they return.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque

from datasketch import MinHash, MinHashLSH

from schemas.text import normalize_question

PAIR_NAMESPACE = uuid.UUID("0b7c4f5e-2d7a-4c1b-8e2f-5a9d3c6b1e02")


def pair_id_for(feedback_event_id: uuid.UUID | str) -> str:
    """Deterministic: a replayed feedback builds the same pair id, so every sink keeps it once."""
    return str(uuid.uuid5(PAIR_NAMESPACE, str(feedback_event_id)))


def answer_key(answer: str, exact: bool = False) -> str:
    """When two answers are the same one: normalized like questions for chat; for a completion (`exact`) the text
    less its trailing whitespace, since code that differs only in punctuation (`x + 1`, `x - 1`) is another answer."""
    return answer.rstrip() if exact else normalize_question(answer)


def text_prompt_key(prompt: str) -> str:
    """Where a text prompt's thumbs-up completions meet its rejected ones: the exact prompt (lowercasing and dropping
    punctuation would merge different code), hashed so that a long prompt makes a short key."""
    return "text:" + hashlib.sha256(prompt.encode()).hexdigest()[:32]


def quality_problem(
    chosen: str | None, rejected: str, min_chars: int, max_chars: int, exact: bool = False
) -> str | None:
    """Why a pair is not worth training on, or None. `chosen` None is a pair waiting for annotation. `exact`:
    chosen and rejected are compared as completions are (`answer_key`)."""
    if len(rejected.strip()) < min_chars:
        return "rejected answer empty or too short"
    if len(rejected) > max_chars:
        return "rejected answer too long"
    if chosen is None:
        return None
    if len(chosen.strip()) < min_chars:
        return "chosen answer empty or too short"
    if len(chosen) > max_chars:
        return "chosen answer too long"
    if answer_key(chosen, exact) == answer_key(rejected, exact):
        return "chosen equals rejected"
    return None


def _shingles(text: str, size: int = 4) -> set[bytes]:
    text = normalize_question(text)
    if len(text) <= size:
        return {text.encode()}
    return {text[i : i + size].encode() for i in range(len(text) - size + 1)}


class NearDuplicateFilter:
    """MinHash LSH over the most recent pairs (question + rejected + chosen), bounded in size.

    In memory: after a restart it starts empty (pairs already emitted are deduplicated downstream by
    pair_id; near-duplicates across a restart are not caught). The same pair id is never its own duplicate.
    """

    def __init__(self, threshold: float, recent: int, num_perm: int = 64):
        self.threshold = threshold
        self.recent = recent
        self.num_perm = num_perm
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._order: deque[str] = deque()

    def _minhash(self, text: str) -> MinHash:
        mh = MinHash(num_perm=self.num_perm)
        mh.update_batch(list(_shingles(text)))
        return mh

    def check_and_add(self, pair_id: str, text: str) -> str | None:
        """The id of a recent near-duplicate of `text`, or None (and `text` is remembered)."""
        if pair_id in self._lsh.keys:
            return None
        mh = self._minhash(text)
        for other in self._lsh.query(mh):
            if other != pair_id:
                return other
        self._lsh.insert(pair_id, mh)
        self._order.append(pair_id)
        while len(self._order) > self.recent:
            self._lsh.remove(self._order.popleft())
        return None


def dedup_text(question: str, rejected: str, chosen: str | None) -> str:
    return f"{question} \u241e {rejected} \u241e {chosen or ''}"


def best_answer(entries: list[dict]) -> dict | None:
    """The thumbs-up answer to prefer: most thumbs up, then most recent."""
    if not entries:
        return None
    return max(entries, key=lambda e: (e["ups"], e["at"]))


def record_thumbs_up(
    entries: list[dict], answer: str, message_id: str, at: float, keep: int = 5, exact: bool = False
) -> list[dict]:
    """Add one thumbs up for `answer` to a question's answer list (bounded to `keep` answers)."""
    key = answer_key(answer, exact)
    entries = [dict(e) for e in entries]
    for entry in entries:
        if entry["key"] == key:
            entry["ups"] += 1
            entry["at"] = at
            break
    else:
        entries.append({"key": key, "answer": answer, "message_id": message_id, "ups": 1, "at": at})
    entries.sort(key=lambda e: (e["ups"], e["at"]), reverse=True)
    return entries[:keep]
