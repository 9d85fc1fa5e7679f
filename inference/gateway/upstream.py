"""Calls to the inference workers, and the background refresh of workers and routing tables.

One shared aiohttp `ClientSession` (HTTP/1.1 keep-alive pool) serves every request. Why not httpx:
at 64 concurrent requests against bench/upstream_stub.py, one shared httpx.AsyncClient (httpx 0.28,
httpcore 1.0) managed 212 requests/s in one process, an aiohttp session 2,663 (httpcore scans every
pooled connection for readability on each request); the gateway's throughput is bounded by this client.

A connection failure marks the worker (see inference/gateway/router.py: ejection with cool-down) and the request is
retried on another worker; for streams the first upstream line is read before the gateway answers, so a
worker that dies before its first token is retried too. Timeouts become `UpstreamTimeout` (504).

The refresher reads, every `gateway_refresh_s` in a background task (never per request):
`flywheel:workers:*` (ready workers; inference/routing.py) and `flywheel:routes:<alias>`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import orjson
from redis.asyncio import Redis

from inference.gateway.router import NoWorkerAvailable, RouteTable, Worker, WorkerPool, may_retry
from inference.gateway.settings import GatewaySettings
from inference.keys import ROUTES_KEY, WORKERS_PATTERN
from inference.routing import parse_routes
from schemas.settings import bearer

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"  # text and fill-in-the-middle prompts (inference/gateway/completions.py)
JSON_HEADERS = {"content-type": "application/json"}
SSE_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


class UpstreamFailure(Exception):
    """Base of the failures the gateway turns into an HTTP error."""

    status = 502

    def __init__(self, message: str, worker: str = ""):
        super().__init__(message)
        self.worker = worker


class UpstreamUnavailable(UpstreamFailure):
    status = 503


class UpstreamTimeout(UpstreamFailure):
    status = 504


class UpstreamHTTPError(UpstreamFailure):
    """The worker answered with an error status; its message is passed on."""

    def __init__(self, status: int, message: str, worker: str = ""):
        super().__init__(message, worker)
        self.status = status


def make_client(settings: GatewaySettings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.gateway_max_connections,
        limit_per_host=0,
        keepalive_timeout=settings.gateway_upstream_keepalive_s,
        ttl_dns_cache=300,
    )
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.gateway_connect_timeout_s, sock_read=settings.gateway_read_timeout_s
    )
    # No cookie jar: the one client serves every user, so a cookie an upstream set would go out with the
    # next user's request (aiohttp's default jar keeps cookies of host names, ignores IP addresses').
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def is_connection_failure(exc: BaseException) -> bool:
    """Failures before the worker answered: refused, reset, closed without a response, connect timeout."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return True
    if isinstance(exc, asyncio.TimeoutError):
        return False
    return isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | ConnectionError)


@dataclass
class UpstreamStream:
    """An upstream SSE stream whose first data line has already arrived."""

    worker: Worker
    response: aiohttp.ClientResponse
    first: bytes
    attempts: int = 1
    _closed: bool = field(default=False, repr=False)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        async for line in self.response.content:
            line = line.strip()
            if line:
                yield line


class Upstream:
    def __init__(
        self,
        settings: GatewaySettings,
        pool: WorkerPool,
        client: aiohttp.ClientSession,
        on_failure: Callable[[str], None] | None = None,
    ):
        self.settings = settings
        self.pool = pool
        self.client = client
        self.max_attempts = settings.gateway_max_attempts
        token = settings.worker_token()
        self.json_headers = {**JSON_HEADERS, **bearer(token)}
        self.sse_headers = {**SSE_HEADERS, **bearer(token)}
        self.on_failure = on_failure  # called with the worker's URL on each connection failure (metrics)

    def _pick(self, tried: list[str], version: str | None) -> Worker:
        try:
            try:
                return self.pool.pick(exclude=tried, version=version)
            except NoWorkerAvailable:
                # Every worker for this version is ejected or already tried: try one again rather than
                # fail. The usual cause is a keep-alive connection the worker had just closed, which
                # a fresh connection fixes; a dead worker refuses at once, and attempts are bounded.
                return self.pool.pick(version=version, include_ejected=True)
        except NoWorkerAvailable as exc:
            if tried:
                raise UpstreamUnavailable(f"{exc} (tried {', '.join(tried)})", tried[-1]) from None
            raise UpstreamUnavailable(str(exc)) from None

    def _failed(self, worker: Worker, exc: BaseException) -> None:
        ejected = self.pool.failed(worker)
        log.warning("upstream connection failure", extra={"worker": worker.url, "error": repr(exc), "ejected": ejected})
        if self.on_failure is not None:
            self.on_failure(worker.url)

    def _retry_or_raise(self, worker: Worker, exc: Exception, attempt: int, starting: bool) -> None:
        """Return when the request may be retried on another worker; raise the gateway's error otherwise."""
        if is_connection_failure(exc):
            self._failed(worker, exc)
            if may_retry(True, False, attempt, self.max_attempts):
                return
            raise UpstreamUnavailable(f"inference worker unreachable: {exc!r}", worker.url) from None
        if isinstance(exc, asyncio.TimeoutError):
            raise self._timeout(worker, starting) from None
        raise exc

    def _timeout(self, worker: Worker, starting: bool) -> UpstreamTimeout:
        what = "start answering" if starting else "answer"
        return UpstreamTimeout(f"the model did not {what} within the gateway's timeout ({worker.url})", worker.url)

    async def complete(self, body: dict, path: str = CHAT_PATH) -> tuple[Worker, dict, int]:
        """A non-streamed completion: (worker, response body, attempts)."""
        payload = orjson.dumps(body)
        tried: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            worker = self._pick(tried, body.get("model"))
            tried.append(worker.url)
            try:
                async with asyncio.timeout(self.settings.gateway_request_timeout_s):
                    async with self.client.post(worker.url + path, data=payload, headers=self.json_headers) as r:
                        status = r.status
                        content = await r.read()
            except Exception as exc:
                self._retry_or_raise(worker, exc, attempt, starting=False)
                continue
            finally:
                self.pool.release(worker)
            self.pool.succeeded(worker)
            if status != 200:
                raise UpstreamHTTPError(status, _error_message(content), worker.url)
            return worker, orjson.loads(content), attempt

    async def stream(self, body: dict, path: str = CHAT_PATH) -> UpstreamStream:
        """Open a streamed completion and wait for its first data line; retried on connection failure.

        The caller must `close_stream()` the returned stream (it releases the worker)."""
        payload = orjson.dumps(body)
        tried: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            worker = self._pick(tried, body.get("model"))
            tried.append(worker.url)
            response = None
            try:
                response = await self.client.post(worker.url + path, data=payload, headers=self.sse_headers)
                if response.status != 200:
                    content = await response.read()
                    raise UpstreamHTTPError(response.status, _error_message(content), worker.url)
                first = b""
                while not first:
                    line = await response.content.readline()
                    if not line:
                        raise ConnectionError("the stream ended before any data")
                    first = line.strip()
                self.pool.succeeded(worker)
                return UpstreamStream(worker, response, first, attempt)
            except BaseException as exc:
                if response is not None:
                    response.close()
                self.pool.release(worker)
                if isinstance(exc, UpstreamFailure) or not isinstance(exc, Exception):
                    raise
                self._retry_or_raise(worker, exc, attempt, starting=True)
                continue

    async def close_stream(self, stream: UpstreamStream) -> None:
        if stream._closed:
            return
        stream._closed = True
        self.pool.release(stream.worker)
        stream.response.release()

    async def aclose(self) -> None:
        await self.client.close()


def _error_message(content: bytes) -> str:
    try:
        data = orjson.loads(content)
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        return str(err)
    except orjson.JSONDecodeError:
        return content[:500].decode(errors="replace") or "empty answer"


class Refresher:
    """Background task: ready workers and routing tables from Redis into memory, every interval."""

    def __init__(self, settings: GatewaySettings, redis: Redis, pool: WorkerPool, routes: RouteTable):
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.routes = routes
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.discovered: dict[str, frozenset[str]] = {}
        self.worker_hosts = frozenset(settings.gateway_worker_hosts)
        self.pool.set_workers([], settings.gateway_upstreams)

    async def refresh_once(self) -> None:
        if self.settings.gateway_discover_workers:
            keys = [k async for k in self.redis.scan_iter(match=WORKERS_PATTERN, count=100)]
            records = await self.redis.mget(keys) if keys else []
            ready: dict[str, frozenset[str]] = {}
            for raw in records:
                if raw is None:
                    continue
                try:
                    rec = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if rec.get("ready") and rec.get("url"):
                    if urlsplit(str(rec["url"])).hostname not in self.worker_hosts:
                        log.warning("worker record on a host not allowed: ignored", extra={"url": rec["url"]})
                        continue
                    ready[rec["url"]] = frozenset([*(rec.get("adapters") or []), rec.get("model")])
            self.discovered = ready
        self.pool.set_workers(self.discovered, self.settings.gateway_upstreams)
        pipe = self.redis.pipeline(transaction=False)
        for alias in self.routes.aliases:
            pipe.hgetall(ROUTES_KEY.format(alias=alias))
        for alias, raw in zip(self.routes.aliases, await pipe.execute(), strict=True):
            self.routes.update(alias, parse_routes(raw))
        self.last_ok = asyncio.get_running_loop().time()
        self.last_error = None

    async def run(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep the last known workers and routes
                if self.last_error is None:
                    log.warning("refresh of workers/routes failed", extra={"error": repr(exc)})
                self.last_error = repr(exc)
            await asyncio.sleep(self.settings.gateway_refresh_s)


_URL = re.compile(r"https?://[^\s'\"),]+")


def public_message(exc: UpstreamFailure, status: int, request_id: str) -> str:
    """What a client is told of an upstream failure: the worker's own words for a request it refused (4xx),
    without addresses; otherwise a generic message (the details, with the worker, are in the log and events)."""
    if status == 503:
        return "no inference worker is available for this model; retry later"
    if status == 504:
        return "the model did not answer within the gateway's timeout"
    if 400 <= status < 500:
        return _URL.sub("<worker>", str(exc))
    return f"the inference worker failed (request id {request_id})"


def status_of(exc: UpstreamFailure) -> str:
    """The response event's status of a failed request."""
    return "timeout" if isinstance(exc, UpstreamTimeout) else "error"
