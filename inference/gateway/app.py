"""The Flywheel gateway: FastAPI app factory, routes, error handlers, lifespan, `main()`; the process's long-lived
parts are wired in inference/gateway/process.py.

Reads: FLYWHEEL_* settings (inference/gateway/settings.py), Redis, the inference workers.
Writes: events to Kafka (or the disk spool), `<data_dir>/dev-api-key` on first start.

Routes (the public contract):
    POST   /v1/chat/completions   OpenAI-compatible, stream or not          scope chat
    GET    /v1/models             aliases and their versions                scope chat
    POST   /chat, /chat/stream    session API, history in Redis             scope chat
    DELETE /session/{session_id}                                            scope chat
    POST   /v1/completions        OpenAI legacy, text prompt; `suffix`: FIM scope chat
    POST   /code/complete         an editor's completion at the cursor      scope chat
    POST   /feedback              thumbs_up / thumbs_down; on a completion
                                  also accepted / rejected                  scope chat
    GET    /admin/workers         router state (workers, routes)            scope admin
    GET    /health                deep: workers, Redis, Kafka (no key: status only; admin key: details)
    GET    /metrics               Prometheus (admin key, or FLYWHEEL_GATEWAY_PUBLIC_METRICS)

Example:

    FLYWHEEL_GATEWAY_UPSTREAMS=http://127.0.0.1:8000 python -m inference.gateway.app
"""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

import orjson
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference.gateway.admission import Caller
from inference.gateway.auth import ACT_AS
from inference.gateway.middleware import JSON, BodyTooLarge, ObserveMiddleware, error_response, json_error
from inference.gateway.openapi import with_bodies
from inference.gateway.process import Gateway
from inference.gateway.protocol import (
    ChatCompletionRequest,
    CodeCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    GatewayError,
    SessionChatRequest,
    describe_validation_errors,
    parse_request,
)
from inference.gateway.settings import GatewaySettings
from schemas.logs import setup_logging

log = logging.getLogger(__name__)

MAX_USER_ID = 200


def user_of(key, asserted: str | None) -> str:
    """The end user of a request: the one the key's holder names (`X-User-Id`) when the key may act as its users
    (the `act_as` scope), else the key's own principal (a signed-in user's token: its subject); naming a user
    without that scope is refused."""
    if asserted is None:
        return key.principal or f"key-{key.key_id}"
    if not key.allows(ACT_AS):
        raise GatewayError(
            403, f"this API key may not name users (X-User-Id needs the '{ACT_AS}' scope)", "insufficient_scope"
        )
    return asserted


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    holder: dict[str, Gateway] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gateway = await Gateway.start(settings)
        holder["g"] = gateway
        app.state.gateway = gateway
        try:
            yield
        finally:
            await gateway.stop()
            holder.pop("g", None)

    docs = {} if settings.gateway_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Flywheel gateway", version="0.1.0", lifespan=lifespan, **docs)
    hot = {}
    app.add_middleware(
        ObserveMiddleware,
        metrics_ref=lambda: holder["g"].metrics if "g" in holder else None,
        hot=hot,
        max_body=settings.gateway_max_body_bytes,
        max_header=settings.gateway_max_header_bytes,
    )

    def g() -> Gateway:
        return holder["g"]

    def require(scope: str):
        async def dependency(
            request: Request,
            authorization: str | None = Header(None),
            x_user_id: str | None = Header(None, max_length=MAX_USER_ID),
        ) -> Caller:
            key = await g().gate.authenticate(authorization, scope)
            return Caller(key, user_of(key, x_user_id), request.state.request_id)

        return dependency

    chat_scope = Depends(require("chat"))
    admin_scope = Depends(require("admin"))

    # -- routes: parse, call serving, answer -------------------------------------------------------

    # The hot routes read headers and parse the body themselves (orjson + pydantic in one call, no FastAPI
    # dependency solving): measured 25% of the gateway's CPU per request before (bench/gateway.py).
    async def caller_of(request: Request, scope: str) -> Caller:
        headers = request.headers
        user_id = headers.get("x-user-id")
        if user_id is not None and len(user_id) > MAX_USER_ID:
            raise GatewayError(
                422,
                f"invalid request: X-User-Id: at most {MAX_USER_ID} characters",
                "invalid_request",
                param="X-User-Id",
            )
        key = await g().gate.authenticate(headers.get("authorization"), scope)
        return Caller(key, user_of(key, user_id), request.state.request_id)

    bodies: dict[str, type] = {}
    app.openapi = with_bodies(app, bodies)

    def hot_route(path: str, body: type, **kwargs):
        """A POST route served by ObserveMiddleware directly (and listed by FastAPI, which never sees it); it
        parses its own `body`, which the OpenAPI schema describes."""

        def register(fn):
            hot[("POST", path)] = fn
            bodies[path] = body
            return app.post(path, **kwargs)(fn)

        return register

    @hot_route("/v1/chat/completions", ChatCompletionRequest)
    async def chat_completions(request: Request):
        caller = await caller_of(request, "chat")
        body = parse_request(ChatCompletionRequest, await request.body())
        return await g().serving.chat_completions(body, caller, request.headers.get("x-session-id"), request.state)

    @app.get("/v1/models")
    async def models(caller: Caller = chat_scope):
        await g().gate.admit(caller.key)
        return Response(orjson.dumps(g().routes.model_list()), media_type=JSON)

    @hot_route("/chat", SessionChatRequest)
    async def chat(request: Request):
        caller = await caller_of(request, "chat")
        body = parse_request(SessionChatRequest, await request.body())
        return await g().serving.session_chat(body, caller, False, request.state)

    @hot_route("/chat/stream", SessionChatRequest)
    async def chat_stream(request: Request):
        caller = await caller_of(request, "chat")
        body = parse_request(SessionChatRequest, await request.body())
        return await g().serving.session_chat(body, caller, True, request.state)

    @hot_route("/v1/completions", CompletionRequest)
    async def completions(request: Request):
        caller = await caller_of(request, "chat")
        body = parse_request(CompletionRequest, await request.body())
        return await g().completions.completions(body, caller, request.headers.get("x-session-id"), request.state)

    @hot_route("/code/complete", CodeCompletionRequest)
    async def code_complete(request: Request):
        caller = await caller_of(request, "chat")
        body = parse_request(CodeCompletionRequest, await request.body())
        return await g().completions.code_complete(body, caller, request.state)

    @app.delete("/session/{session_id}")
    async def delete_session(session_id: str, caller: Caller = chat_scope):
        return await g().serving.delete_session(session_id, caller)

    @hot_route("/feedback", FeedbackRequest, status_code=202)
    async def feedback(request: Request):
        caller = await caller_of(request, "chat")
        return await g().serving.feedback(parse_request(FeedbackRequest, await request.body()), caller)

    @app.get("/admin/workers")
    async def admin_workers(caller: Caller = admin_scope):
        gw = g()
        routes = {
            a: [{"version": r.version, "weight": r.weight} for r in gw.routes.versions(a)] for a in gw.routes.aliases
        }
        return Response(orjson.dumps({"workers": gw.pool.snapshot(), "routes": routes}), media_type=JSON)

    async def is_admin(authorization: str | None) -> bool:
        try:
            await g().gate.authenticate(authorization, "admin")
        except GatewayError:
            return False
        return True

    @app.get("/health")
    async def health(authorization: str | None = Header(None)):
        ok, checks = await g().health()
        if not await is_admin(authorization):  # the status and each check's verdict; details for operators
            checks = {name: {"ok": check["ok"]} for name, check in checks.items()}
        return Response(
            orjson.dumps({"status": "ok" if ok else "degraded", "checks": checks}),
            status_code=200 if ok else 503,
            media_type=JSON,
        )

    @app.get("/metrics")
    async def metrics(authorization: str | None = Header(None)):
        gw = g()
        if not settings.gateway_public_metrics:
            await gw.gate.authenticate(authorization, "admin")
        try:
            gw.metrics.active_sessions.set(await asyncio.wait_for(gw.sessions.active_count(), 1.0))
        except Exception as exc:  # Redis down: keep the last value, say why in the log
            log.warning("active session count unavailable", extra={"error": repr(exc)})
        gw.metrics.workers_ready.set(gw.pool.ready_count())
        gw.metrics.spool_backlog.set(await asyncio.to_thread(gw.publisher.spool.backlog))
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- errors: always OpenAI-style JSON ----------------------------------------------------------

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError):
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, field = describe_validation_errors(list(exc.errors()))
        return json_error(422, message, "invalid_request", param=field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return json_error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RedisError)
    @app.exception_handler(BodyTooLarge)
    async def redis_error_or_body_too_large(request: Request, exc: Exception):
        return error_response(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return error_response(request, exc)

    return app


def tune_gc(gen0: int) -> None:
    """In a gateway process (not in create_app: tests build many apps in one process): freeze what start-up
    allocated out of the collector's walks and collect generation 0 every `gen0` net allocations."""
    if gen0:
        gc.freeze()
        gc.set_threshold(gen0, 20, 100)


def worker_app() -> FastAPI:
    """The app of one uvicorn worker process (gateway_workers > 1): its own logging set up, then the app."""
    settings = GatewaySettings()
    setup_logging(settings.log_level)
    app = create_app(settings)
    tune_gc(settings.gateway_gc_gen0)
    return app


def main() -> None:
    import uvicorn

    settings = GatewaySettings()
    setup_logging(settings.log_level)
    # proxy_headers off: nothing reads the client address, and the middleware cost ~1% per request.
    options = dict(
        host=settings.gateway_host,
        port=settings.gateway_port,
        loop="uvloop",
        http="httptools",
        access_log=settings.gateway_access_log,
        log_config=None,
        lifespan="on",
        timeout_keep_alive=30,
        proxy_headers=False,
    )
    if settings.gateway_workers > 1:  # each worker process builds its own app from the same settings
        uvicorn.run("inference.gateway.app:worker_app", factory=True, workers=settings.gateway_workers, **options)
    else:
        app = create_app(settings)
        tune_gc(settings.gateway_gc_gen0)
        uvicorn.run(app, **options)


if __name__ == "__main__":
    main()
