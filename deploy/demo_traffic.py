"""The demo's simulated users: what they ask, how they judge an answer, and their traffic through the gateway.

Pure pieces (unit-tested): `TrafficPlan`, `judge`, `select_corrected`. I/O: `Gateway` (the OpenAI-compatible
chat endpoint, /code/complete and /feedback, as a client app or an editor calls them), `Traffic` (asks at a steady
rate in a thread, judges every answer and sends the feedback). `deploy.demo` drives them and follows the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import httpx

from deploy.demo_cases import CodeQA
from deploy.openloop import OpenLoop
from retrain.demo import QA
from retrain.rouge import rouge_l

log = logging.getLogger(__name__)

CORRECT_AT = 0.7  # ROUGE-L at or above which a user takes an answer as right
LEARNED_AT = 0.8  # ROUGE-L at or above which an answer after the loop counts as "answered with the correction"
USER_PREFIX = "demo-user-"
EDITOR_VERDICTS = {"thumbs_up": "accepted", "thumbs_down": "rejected"}


# -- the traffic plan and the judgement (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    user: str
    qa: QA
    kind: str  # "loop": a loop intent's asked question; "other": another intent's test question
    corrects: bool  # a wrong answer to it gets the reference answer as the correction


@dataclass(frozen=True)
class Judgement:
    score: float
    verdict: str  # thumbs_up | thumbs_down
    correction: str | None


def judge(answer: str, ask: Ask, correcting: bool = True) -> Judgement:
    """A user's verdict on `answer`: right at ROUGE-L >= CORRECT_AT against the reference answer."""
    score = rouge_l(answer, ask.qa.answer)
    if score >= CORRECT_AT:
        return Judgement(score, "thumbs_up", None)
    return Judgement(score, "thumbs_down", ask.qa.answer if ask.corrects and correcting else None)


def select_corrected(asked: Sequence[QA], wanted: Iterable[str] = ()) -> list[QA]:
    """The asked loop questions whose wrong answers get corrections: those whose intent id or text is in `wanted`
    (all of them when `wanted` is empty); ValueError names what matched nothing."""
    wanted = [w.strip() for w in wanted if w.strip()]
    if not wanted:
        return list(asked)
    unknown = [w for w in wanted if not any(w in (qa.intent, qa.question) for qa in asked)]
    if unknown:
        raise ValueError(f"not a loop intent or asked loop question: {', '.join(unknown)}")
    return [qa for qa in asked if qa.intent in wanted or qa.question in wanted]


class TrafficPlan:
    """Who asks what, in order: each ask a loop question with probability `loop_share`, else another intent's test
    question, from one of `users` users (`demo-user-<n>`). Seeded: the same arguments give the same sequence."""

    def __init__(
        self,
        loop_questions: Sequence[QA],
        other_questions: Sequence[QA],
        corrected: Sequence[QA],
        users: int = 20,
        loop_share: float = 0.5,
        seed: int = 0,
    ):
        if users < 1:
            raise ValueError("users must be at least 1")
        if not 0 <= loop_share <= 1:
            raise ValueError("loop_share must be between 0 and 1")
        if not loop_questions and not other_questions:
            raise ValueError("no questions to ask")
        self.loop_questions = list(loop_questions)
        self.other_questions = list(other_questions)
        self.corrected = {qa.question for qa in corrected}
        self.users = [f"{USER_PREFIX}{n}" for n in range(users)]
        self.loop_share = loop_share if self.other_questions else 1.0
        if not self.loop_questions:
            self.loop_share = 0.0
        self._rng = random.Random(seed)

    def next(self) -> Ask:
        user = self._rng.choice(self.users)
        if self._rng.random() < self.loop_share:
            qa = self._rng.choice(self.loop_questions)
            return Ask(user, qa, "loop", qa.question in self.corrected)
        return Ask(user, self._rng.choice(self.other_questions), "other", False)

    def take(self, n: int) -> list[Ask]:
        return [self.next() for _ in range(n)]


# -- the loop's progress, from bus events (pure) ---------------------------------------------------------------------


@dataclass
class Exchange:
    """One question asked in the run, its answer, and the user's feedback."""

    at: float  # unix time the request was sent
    user: str
    question: str
    intent: str
    kind: str
    reference: str
    status: int = 0  # HTTP status; 0: no answer
    latency_s: float = 0.0
    version: str = ""
    message_id: str = ""
    session_id: str = ""
    answer: str = ""
    score: float | None = None
    verdict: str = ""  # the feedback sent ("" when none was sent)
    corrected: bool = False
    error: str = ""
    route: str = "chat"  # "chat": /v1/chat/completions; "code": /code/complete
    sources: list[str] = field(default_factory=list)  # a rag answer's source documents, best first


class Gateway:
    """The OpenAI-compatible chat endpoint, /code/complete (for a `CodeQA`) and /feedback, as a client app and an
    editor plugin call them."""

    def __init__(
        self, url: str, api_key: str, alias: str, max_tokens: int = 64, temperature: float = 0.0, timeout: float = 180.0
    ):
        self.url = url.rstrip("/")
        self.alias = alias
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.timeout = timeout

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout)

    async def ask(
        self, http: httpx.AsyncClient, user: str, qa: QA, kind: str, temperature: float | None = None
    ) -> Exchange:
        """`qa` asked by `user`: a chat question, or for a `CodeQA` an editor's completion at its gap."""
        ex = Exchange(time.time(), user, qa.question, qa.intent, kind, qa.answer)
        temperature = self.temperature if temperature is None else temperature
        common = {"model": self.alias, "max_tokens": self.max_tokens, "temperature": temperature}
        if isinstance(qa, CodeQA):
            ex.route = "code"
            body = {"prefix": qa.question, "suffix": qa.suffix, "language": qa.lang, **common}
            return await self._post(http, ex, "/code/complete", body, _read_completion)
        body = {"messages": [{"role": "user", "content": qa.question}], "user": user, **common}
        return await self._post(http, ex, "/v1/chat/completions", body, _read_chat)

    async def _post(self, http: httpx.AsyncClient, ex: Exchange, path: str, body: dict, read) -> Exchange:
        try:
            r = await http.post(path, json=body, headers={"X-User-Id": ex.user})
            ex.status = r.status_code
            ex.version = r.headers.get("x-model-version", "")
            ex.session_id = r.headers.get("x-session-id", "")
            if r.status_code == 200:
                read(ex, r.json())
            else:
                ex.error = r.text[:300]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            ex.error = f"{type(exc).__name__}: {exc}"
        ex.latency_s = time.time() - ex.at
        return ex

    async def feedback(self, http: httpx.AsyncClient, ex: Exchange, verdict: str, correction: str | None) -> bool:
        if ex.route == "code":  # an editor's verdict on a completion
            verdict = EDITOR_VERDICTS[verdict]
        body = {"session_id": ex.session_id, "message_id": ex.message_id, "feedback": verdict}
        if correction:
            body["correction"] = correction
        try:
            r = await http.post("/feedback", json=body, headers={"X-User-Id": ex.user})
        except httpx.HTTPError as exc:
            log.warning("feedback failed", extra={"error": repr(exc)})
            return False
        if r.status_code != 202:
            log.warning("feedback refused", extra={"status": r.status_code, "body": r.text[:200]})
        return r.status_code == 202

    def routes(self) -> dict[str, int]:
        """The alias's routes as the gateway lists them (GET /v1/models); empty when it cannot say."""
        try:
            r = httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=10.0)
            entry = next((m for m in r.json()["data"] if m["id"] == self.alias), {})
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.debug("routes from /v1/models failed", extra={"error": repr(exc)})
            return {}
        return {v["version"]: int(v["weight"]) for v in entry.get("versions") or []}

    def ask_all(self, user: str, qas: Sequence[QA], kind: str) -> list[Exchange]:
        """Ask each question once, in turn, at temperature 0 (no feedback): the after-the-loop answers."""

        async def run() -> list[Exchange]:
            async with self.client() as http:
                return [await self.ask(http, user, qa, kind, temperature=0.0) for qa in qas]

        return asyncio.run(run())


def _read_chat(ex: Exchange, data: dict) -> None:
    ex.message_id = data["id"]
    ex.answer = data["choices"][0]["message"].get("content") or ""
    ex.sources = [s["document"] for s in data.get("sources") or []]


def _read_completion(ex: Exchange, data: dict) -> None:
    ex.message_id, ex.session_id, ex.answer = data["message_id"], data["session_id"], data["completion"]
    ex.version = ex.version or data["model"]


class Traffic(OpenLoop):
    """Open-loop traffic at `rate` asks/s from `plan`, each answer judged and fed back; in its own thread."""

    name = "demo-traffic"

    def __init__(self, gateway: Gateway, plan: TrafficPlan, rate: float):
        super().__init__(rate)
        self.gateway = gateway
        self.plan = plan
        self.correcting = True  # off: wrong answers get plain thumbs-down (the --bad run once it has its pairs)
        self.exchanges: list[Exchange] = []
        self.sent = 0
        self._lock = threading.Lock()

    def snapshot(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    def client(self) -> httpx.AsyncClient:
        return self.gateway.client()

    async def one(self, http: httpx.AsyncClient) -> None:
        await self._one(http, self.plan.next())

    async def _one(self, http: httpx.AsyncClient, ask: Ask) -> None:
        self.sent += 1
        ex = await self.gateway.ask(http, ask.user, ask.qa, ask.kind)
        if ex.status == 200:
            j = judge(ex.answer, ask, self.correcting)
            ex.score = j.score
            if await self.gateway.feedback(http, ex, j.verdict, j.correction):
                ex.verdict, ex.corrected = j.verdict, j.correction is not None
        with self._lock:
            self.exchanges.append(ex)


# -- the bus ---------------------------------------------------------------------------------------------------------
