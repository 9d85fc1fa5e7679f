"""The async chat client that `flywheel data synth|judge|eval` share, for any OpenAI-compatible endpoint.

Defaults point at the local gateway: http://127.0.0.1:8080/v1, model "support" (the alias the gateway routes), and
the key the gateway wrote to `<data_dir>/dev-api-key` (FLYWHEEL_DATA_DIR, default .flywheel). Any other endpoint
works with --url, --model and --api-key: OpenAI, vLLM, a judge model elsewhere.

Why the official `openai` package: it is the reference client of the protocol these endpoints copy, and the gateway
tests already use it. Its own retries are off (max_retries=0) and this module retries instead, so that:
- at most `concurrency` requests are in flight (an asyncio.Semaphore), however many items a command has;
- 408, 429, 5xx answers and connection errors or timeouts are retried with exponential backoff and jitter, waiting
  at least what a Retry-After (or retry-after-ms) header asks; a wait longer than the backoff cap ends the retries;
- failures are typed: RequestRefused (any other 4xx: a wrong key, model or request, so the command stops) and
  GaveUp (still failing after the retries: the command counts the item as failed, and a rerun asks again);
- the commands can report how many requests and retries a run took.

Also here, because all three commands need them: the endpoint's click options (`endpoint_options`), the rich
progress bar that runs a batch of items (`run_all`) and the table of a run's outcomes (`counts_table`).

Example:
    async with ChatClient("http://127.0.0.1:8080/v1", api_key=default_api_key()) as client:
        text = await client.chat("support", [{"role": "user", "content": "Where is my order?"}])
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import httpx
import openai
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from schemas.settings import CommonSettings

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080/v1"
DEFAULT_MODEL = "support"
# What a retry can fix: a timeout, rate limiting, a server error. (Every 5xx is retried too.)
RETRY_STATUSES = frozenset({408, 429})

T = TypeVar("T")


class EndpointError(Exception):
    """A chat request that did not produce an answer."""


class RequestRefused(EndpointError):
    """The endpoint refused the request (a 4xx other than 408 and 429): retrying the same request cannot help."""


class GaveUp(EndpointError):
    """Still failing after every retry, or asked to wait longer than the longest backoff."""


def retryable(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a server asks for: `retry-after-ms` (OpenAI's), else `retry-after` in seconds or as an HTTP date.

    None when there is neither or it cannot be read. `headers` should look keys up case-insensitively, as
    httpx.Headers does (a plain dict needs lower-case keys)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after_s: float | None, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number `attempt` (0 for the first request).

    Exponential with "equal jitter": half of min(max_s, base_s * 2**attempt) for sure and the other half at random,
    so that waits grow and clients that failed together do not come back together. A server's Retry-After is a
    floor, plus up to base_s at random: many clients told "1 second" should not return in the same millisecond."""
    ceiling = min(max_s, base_s * 2**attempt)
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s + rng.uniform(0, base_s))
    return delay


class ChatClient:
    """Chat completions on one endpoint: at most `concurrency` requests in flight, transient failures retried.

    `http_client` and `sleep` are for tests (a transport without a network, a clock that does not wait)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str = "",
        *,
        concurrency: int = 4,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ):
        self.url = url
        # "EMPTY": the placeholder vLLM documents for a server without keys (the SDK refuses an empty key)
        self._openai = openai.AsyncOpenAI(
            base_url=url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s, http_client=http_client
        )
        self._slots = asyncio.Semaphore(concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.requests = 0
        self.retries = 0

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._openai.close()

    async def chat(
        self, model: str, messages: list[dict], *, temperature: float | None = None, max_tokens: int | None = None
    ) -> str:
        """The answer's text ("" when the endpoint sends no choice). Raises RequestRefused or GaveUp."""
        options: dict[str, Any] = {}
        if temperature is not None:
            options["temperature"] = temperature
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        # The slot is held through the backoff as well: when the server pushes back, the whole batch slows down,
        # instead of the other requests taking the freed slot and being refused in turn.
        async with self._slots:
            for attempt in range(self.max_retries + 1):
                self.requests += 1
                try:
                    completion = await self._openai.chat.completions.create(model=model, messages=messages, **options)
                    return (completion.choices[0].message.content or "") if completion.choices else ""
                except openai.APIStatusError as exc:
                    if not retryable(exc.status_code):
                        raise RequestRefused(f"{self.url}: HTTP {exc.status_code}: {_error_text(exc)}") from exc
                    failure, retry_after = f"HTTP {exc.status_code}", retry_after_seconds(exc.response.headers)
                except openai.APIConnectionError as exc:  # APITimeoutError is one of these
                    failure, retry_after = f"{type(exc).__name__}: {exc}", None
                except openai.APIError as exc:  # a 2xx the SDK cannot read: the endpoint is not OpenAI-compatible
                    raise RequestRefused(f"{self.url}: {exc}") from exc
                if attempt == self.max_retries:
                    break
                if retry_after is not None and retry_after > self.max_backoff_s:
                    wait = f"asked to wait {retry_after:.0f} s (over {self.max_backoff_s} s)"
                    raise GaveUp(f"{self.url}: {failure}, {wait}")
                delay = backoff_delay(attempt, self.backoff_s, self.max_backoff_s, retry_after, self._rng)
                self.retries += 1
                ids = {"url": self.url, "model": model, "failure": failure, "attempt": attempt + 1}
                log.info("retrying chat request", extra={**ids, "delay_s": round(delay, 3)})
                await self._sleep(delay)
        raise GaveUp(f"{self.url}: {failure} after {self.max_retries + 1} attempts")


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("message") or exc.message)


# -- what the commands share --------------------------------------------------------------------------------


def default_api_key() -> str:
    """The local stack's dev key (`<data_dir>/dev-api-key`, written by the gateway's first start), or ""."""
    try:
        return (CommonSettings().data_dir / "dev-api-key").read_text().strip()
    except FileNotFoundError:
        return ""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to ask: what `endpoint_options` collects from the command line."""

    url: str = DEFAULT_URL
    model: str = DEFAULT_MODEL
    api_key: str = ""
    concurrency: int = 4
    max_retries: int = 5
    timeout_s: float = 120.0

    def client(self) -> ChatClient:
        return ChatClient(
            self.url,
            self.api_key,
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            timeout_s=self.timeout_s,
        )


def endpoint_options(func: Callable | None = None, *, model_flag: str = "--model", model_help: str = "model name"):
    """Click options --url, --model (or `model_flag`), --api-key, --concurrency, --max-retries, --timeout, handed to
    the command as one `endpoint: Endpoint` argument (the key read from the data dir when --api-key is not given)."""
    if func is None:
        return functools.partial(endpoint_options, model_flag=model_flag, model_help=model_help)

    @functools.wraps(func)
    def command(*args, url, model, api_key, concurrency, max_retries, timeout, **kwargs):
        endpoint = Endpoint(url, model, api_key or default_api_key(), concurrency, max_retries, timeout)
        return func(*args, endpoint=endpoint, **kwargs)

    options = [
        click.option("--url", default=DEFAULT_URL, show_default=True, help="OpenAI-compatible base URL"),
        click.option(model_flag, "model", default=DEFAULT_MODEL, show_default=True, help=model_help),
        click.option("--api-key", default=None, help="bearer key [default: <data_dir>/dev-api-key]"),
        click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="in flight"),
        click.option("--max-retries", type=click.IntRange(min=0), default=5, show_default=True, help="per request"),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def progress_bar() -> Progress:
    """Progress on stderr (stdout may be piped); rich draws nothing when stderr is not a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


async def run_all(items: Iterable[T], work: Callable[[T], Awaitable[None]], description: str, total: int) -> None:
    """Await `work(item)` for every item with a progress bar, a bounded number at once.

    Tasks are made as slots free up, not all at the start: a file of 100,000 items does not become 100,000
    coroutines waiting on the client's semaphore. `work` handles the failures it can count (GaveUp); any other
    exception cancels the rest and is raised."""
    window = asyncio.Semaphore(64)

    async def one(item: T, progress: Progress, task) -> None:
        try:
            await work(item)
        finally:
            window.release()
            progress.advance(task)

    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        try:
            async with asyncio.TaskGroup() as group:
                for item in items:
                    await window.acquire()
                    group.create_task(one(item, progress, task))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None


def counts_table(title: str, rows: Iterable[tuple[str, int]], client: ChatClient) -> Table:
    """A run's outcome: items per outcome, then the requests (and retries) it took."""
    table = Table("outcome", Column("items", justify="right"), title=title)
    for name, count in rows:
        table.add_row(name, str(count))
    table.add_row("requests (retries)", f"{client.requests} ({client.retries})", style="dim")
    return table
