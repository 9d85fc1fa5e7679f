"""Simulated users of a `deploy.sandbox.LocalLoop` stack: questions through the official openai client,
feedback with corrections, and steady open-loop traffic whose every answer its user rates.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.openloop import OpenLoop
from deploy.sandbox import ALIAS, Events, LocalLoop

GOLDEN = Path(__file__).resolve().parents[1] / "retrain" / "golden" / "support.jsonl"


def golden_items() -> list[tuple[str, str]]:
    """(question, expected answer) of the golden set: the questions users ask, their corrections."""
    items = []
    for line in GOLDEN.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            question = next(m["content"] for m in reversed(rec["prompt"]) if m["role"] == "user")
            items.append((question, rec["expected"]))
    return items


@dataclass
class Answer:
    message_id: str
    session_id: str
    version: str
    content: str


def openai_client(loop: LocalLoop):
    from openai import OpenAI

    return OpenAI(base_url=f"{loop.gateway_url}/v1", api_key=loop.api_key, timeout=180.0, max_retries=0)


def ask(client, user: str, question: str, max_tokens: int = 16) -> Answer:
    """One question through the gateway with the official openai client, as `user`."""
    raw = client.chat.completions.with_raw_response.create(
        model=ALIAS,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        user=user,
        extra_headers={"X-User-Id": user},
    )
    completion = raw.parse()
    return Answer(
        completion.id,
        raw.headers["x-session-id"],
        raw.headers["x-model-version"],
        completion.choices[0].message.content or "",
    )


def feedback(
    loop: LocalLoop, user: str, answer: Answer, verdict: str, correction: str | None = None, comment: str | None = None
) -> None:
    body = {"session_id": answer.session_id, "message_id": answer.message_id, "feedback": verdict}
    if correction:
        body["correction"] = correction
    if comment:
        body["comment"] = comment
    r = httpx.post(
        f"{loop.gateway_url}/feedback",
        json=body,
        timeout=60.0,
        headers={"Authorization": f"Bearer {loop.api_key}", "X-User-Id": user},
    )
    r.raise_for_status()


def send_corrections(
    loop: LocalLoop, events: Events, batch: int = 8, timeout: float = 300.0, since: float | None = None
) -> list[Answer]:
    """Users ask golden-set questions and thumb each answer down with the expected answer as correction,
    a batch at a time, until the trigger requests a retrain job (seen on retrain.jobs after `since`)."""
    from schemas.events import RetrainJob

    client = openai_client(loop)
    items = golden_items()
    since = time.time() if since is None else since
    answers: list[Answer] = []
    deadline = time.monotonic() + timeout
    round_no = 0
    while True:
        for i in range(batch):
            question, expected = items[(round_no * batch + i) % len(items)]
            user = f"corrector-{round_no}-{i}"
            if round_no:  # the same question again, phrased a little differently (the dedup filter is fuzzy)
                question = f"{question} (asking again, ticket {random.randint(10000, 99999)})"
            answer = ask(client, user, question)
            feedback(loop, user, answer, "thumbs_down", correction=expected, comment="wrong answer")
            answers.append(answer)
        round_wait = time.monotonic() + 45.0
        while time.monotonic() < min(round_wait, deadline):
            if events.find(
                lambda e: (
                    isinstance(e, RetrainJob) and e.status == "requested" and e.occurred_at.timestamp() >= since - 1
                )
            ):
                return answers
            time.sleep(0.5)
        if time.monotonic() >= deadline:
            raise AssertionError(f"no retrain job requested after {len(answers)} corrections in {timeout:.0f}s")
        round_no += 1


QUESTIONS = (
    "Do you ship to Canada?",
    "How do I return an item?",
    "Where is my order?",
    "Can I change my address?",
    "What is your refund policy?",
    "Is the blender in stock?",
    "How long does delivery take?",
    "Can I cancel my order?",
    "Do you have a warranty?",
    "How do I reset my password?",
)


def spread_users(n: int) -> list[str]:
    """`n` user ids spread evenly over the 100 sticky routing buckets (inference.routing.bucket), so that a canary
    at weight w gets w% of the users (ids drawn at random would leave the 5% step with a handful of users or none)."""
    from inference.routing import bucket

    per_bucket = max(1, n // 100)
    chosen: dict[int, list[str]] = {b: [] for b in range(100)}
    k = 0
    while any(len(v) < per_bucket for v in chosen.values()):
        user = f"user-{k}"
        if len(chosen[bucket(user)]) < per_bucket:
            chosen[bucket(user)].append(user)
        k += 1
    return [u for users in chosen.values() for u in users]


@dataclass
class Result:
    user: str
    started: float  # unix time
    ended: float
    status: int  # HTTP status; 0: no answer (connection error, timeout)
    version: str = ""
    message_id: str = ""
    error: str = ""
    rated: str = ""


class Traffic(OpenLoop):
    """Steady load through the gateway: `rate` requests/s, each from one of `users` sticky users.

    Each answer is rated by its user with `verdict(version, user)` (None: not rated), so that the canary's figures
    come from real feedback.
    """

    def __init__(
        self,
        loop: LocalLoop,
        rate: float = 20.0,
        users: int = 200,
        max_tokens: int = 4,
        verdict: Callable[[str, str], str | None] = lambda version, user: "thumbs_up",
    ):
        super().__init__(rate)
        self.loop = loop
        self.max_tokens = max_tokens
        self.verdict = verdict
        self.user_ids = spread_users(users)
        self.results: list[Result] = []
        self.feedback_errors: list[str] = []

    def stop(self, timeout: float = 300.0) -> list[Result]:
        super().stop(timeout)
        return self.results

    def client(self):
        # aiohttp, not httpx: httpcore's pool assigns queued requests to connections in O(pending) per event,
        # so once a latency spike queues a few dozen requests the generator itself eats the core and stalls.
        import aiohttp

        headers = {"Authorization": f"Bearer {self.loop.api_key}"}
        timeout = aiohttp.ClientTimeout(total=180.0, sock_connect=10.0)
        return aiohttp.ClientSession(
            base_url=self.loop.gateway_url, headers=headers, timeout=timeout, connector=aiohttp.TCPConnector(limit=512)
        )

    async def one(self, http) -> None:
        await self._one(http, random.choice(self.user_ids))

    async def _one(self, http, user: str) -> None:
        body = {
            "model": ALIAS,
            "messages": [{"role": "user", "content": random.choice(QUESTIONS)}],
            "max_tokens": self.max_tokens,
            "user": user,
        }
        result = Result(user, time.time(), 0.0, 0)
        try:
            async with http.post("/v1/chat/completions", json=body, headers={"X-User-Id": user}) as r:
                result.status = r.status
                result.version = r.headers.get("x-model-version", "")
                session_id = r.headers.get("x-session-id", "")
                if r.status == 200:
                    result.message_id = (await r.json())["id"]
                else:
                    result.error = (await r.text())[:300]
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        result.ended = time.time()
        self.results.append(result)
        if result.status != 200:
            return
        verdict = self.verdict(result.version, user)
        if verdict is None:
            return
        fb = {"session_id": session_id, "message_id": result.message_id, "feedback": verdict}
        try:
            async with http.post("/feedback", json=fb, headers={"X-User-Id": user}) as f:
                if f.status != 202:
                    self.feedback_errors.append(f"{f.status} {(await f.text())[:200]}")
                else:
                    result.rated = verdict
        except Exception as exc:
            self.feedback_errors.append(f"{type(exc).__name__}: {exc}")

    def achieved_rate(self) -> float:
        if len(self.results) < 2:
            return 0.0
        starts = sorted(r.started for r in self.results)
        return (len(starts) - 1) / max(1e-9, starts[-1] - starts[0])
