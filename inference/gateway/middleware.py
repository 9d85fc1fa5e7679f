"""The gateway's outer layer, in pure ASGI: request ids, metrics per route, bounds on what a request may make the
gateway read (413 for bodies, 431 for heads, before reading them), the hot routes served without Starlette's stack,
and the JSON error answers every route shares.
"""

from __future__ import annotations

import asyncio
import logging
import random
from functools import partial

from fastapi import Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from inference.gateway.metrics import GatewayMetrics
from inference.gateway.protocol import GatewayError, error_body

log = logging.getLogger(__name__)

JSON = "application/json"
ROUTE_LABELS = {
    "/v1/chat/completions": "chat_completions",
    "/v1/models": "models",
    "/chat": "chat",
    "/chat/stream": "chat_stream",
    "/v1/completions": "completions",
    "/code/complete": "code_complete",
    "/feedback": "feedback",
    "/health": "health",
    "/metrics": "metrics",
    "/admin/workers": "admin",
}


class ObserveMiddleware:
    """Pure ASGI: request id, in-flight gauge, request counter and latency histogram per route.

    It also serves the hot routes (`hot`: (method, path) -> handler(Request) -> Response) itself, with the
    same error answers as the app's exception handlers: Starlette's middleware stack, router and FastAPI's
    request wrapper cost about 12% of the CPU of a /chat request (py-spy, bench/gateway.py). The other routes
    go through FastAPI."""

    def __init__(self, app, metrics_ref, hot=None, max_body: int = 1_048_576, max_header: int = 32_768):
        self.app = app
        self.metrics_ref = metrics_ref
        self.hot = hot or {}
        self.max_body, self.max_header = max_body, max_header

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics: GatewayMetrics | None = self.metrics_ref()
        path = scope["path"]
        route = ROUTE_LABELS.get(path) or ("session_delete" if path.startswith("/session/") else "other")
        state = scope.setdefault("state", {})
        request_id = length = None
        head = 0
        for name, value in scope["headers"]:
            head += len(name) + len(value) + 4
            if name == b"x-request-id":
                request_id = value.decode(errors="replace")[:100]
            elif name == b"content-length":
                length = value
        state["request_id"] = request_id = request_id or f"{random.getrandbits(128):032x}"  # uuid4: 3x dearer
        rid = request_id.encode()
        status = 500
        refusal = self._refusal(head, length)
        if refusal is not None:
            await _refuse(send, rid, *refusal)
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            receive = _bounded(receive, self.max_body)  # a chunked body: counted as it arrives

        async def send_observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        handler = self.hot.get((scope["method"], path))
        app = self.app if handler is None else partial(_serve_hot, handler)
        if metrics is None:
            return await app(scope, receive, send_observed)
        metrics.in_flight.inc()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await app(scope, receive, send_observed)
        finally:
            metrics.in_flight.dec()
            if route != "metrics":
                metrics.latency.labels(route).observe(loop.time() - t0)
            metrics.requests.labels(route, str(status), state.get("model_version", "")).inc()

    def _refusal(self, head: int, length: bytes | None) -> tuple[int, str, str] | None:
        if head > self.max_header:
            return 431, f"request headers over {self.max_header} bytes", "headers_too_large"
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return 400, "invalid Content-Length", "invalid_request"
            if size > self.max_body:
                return 413, f"request body over {self.max_body} bytes", "body_too_large"
        return None


class BodyTooLarge(Exception):
    """A chunked body grew past the limit while it was read."""


def _bounded(receive, limit: int):
    seen = 0

    async def bounded():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body over {limit} bytes")
        return message

    return bounded


async def _refuse(send, rid: bytes, status: int, message: str, code: str) -> None:
    body = error_body(status, message, code)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"x-request-id", rid)]})
    await send({"type": "http.response.body", "body": body})


async def _serve_hot(handler, scope, receive, send) -> None:
    request = Request(scope, receive)
    try:
        response = await handler(request)
    except Exception as exc:
        response = error_response(request, exc)
    await response(scope, receive, send)


def error_response(request: Request, exc: Exception) -> Response:
    """The JSON answer to an exception a route raised (the hot routes' and the app's handlers')."""
    if isinstance(exc, GatewayError):
        return Response(exc.body(), status_code=exc.status, media_type=JSON, headers=exc.headers)
    if isinstance(exc, BodyTooLarge):
        return json_error(413, str(exc), "body_too_large")
    if isinstance(exc, RedisError):
        log.error("redis unavailable", extra={"request_id": request_id_of(request), "error": repr(exc)})
        return json_error(503, "the session store (Redis) is unavailable; retry later", "store_unavailable")
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id_of(request), "path": request.url.path})
    return json_error(500, f"internal error (request id {request_id_of(request)})", "internal_error")


def json_error(status: int, message: str, code: str | None = None, headers=None, param=None) -> Response:
    return Response(error_body(status, message, code, param), status_code=status, media_type=JSON, headers=headers)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""
