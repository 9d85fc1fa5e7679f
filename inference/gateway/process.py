"""Every long-lived part of one gateway process, wired once at start (`Gateway.start`) and closed at stop: Redis and
the API keys, admission, sessions, the worker pool and routing table with their refresher, the upstream client, the
event publisher, the retrieval processes of rag aliases, and the chat and completion serving built on them.

Used by inference/gateway/app.py (the FastAPI app's lifespan and routes).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from inference.gateway.admission import Gate
from inference.gateway.auth import ApiKeyStore, ensure_dev_key
from inference.gateway.completions import CompletionServing
from inference.gateway.fim import resolve_template
from inference.gateway.metrics import GatewayMetrics
from inference.gateway.publisher import EventPublisher
from inference.gateway.rag import Retriever, knowledge_base_dir
from inference.gateway.ratelimit import RateLimiter
from inference.gateway.router import RouteTable, WorkerPool
from inference.gateway.serving import ChatServing
from inference.gateway.sessions import SessionStore
from inference.gateway.settings import GatewaySettings
from inference.gateway.upstream import Refresher, Upstream, make_client
from inference.gateway.user_tokens import UserTokens

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Every long-lived part of one gateway process, wired once (a `bootstrap`)."""

    settings: GatewaySettings
    metrics: GatewayMetrics
    redis: Redis
    keys: ApiKeyStore
    gate: Gate
    sessions: SessionStore
    pool: WorkerPool
    routes: RouteTable
    refresher: Refresher
    publisher: EventPublisher
    serving: ChatServing
    upstream: Upstream
    tasks: list[asyncio.Task]
    retriever: Retriever | None = None
    completions: CompletionServing | None = None  # /v1/completions, /code/complete

    @classmethod
    async def start(cls, settings: GatewaySettings) -> Gateway:
        metrics = GatewayMetrics()
        redis_pool = BlockingConnectionPool.from_url(
            settings.redis_dsn,
            max_connections=settings.gateway_redis_max_connections,
            timeout=settings.gateway_redis_pool_timeout_s,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=30,
        )
        redis = Redis(connection_pool=redis_pool)
        keys = ApiKeyStore(redis, cache_ttl_s=settings.gateway_key_cache_s)
        sessions = SessionStore(redis, max_turns=settings.gateway_history_turns)
        gate = Gate(redis, keys, RateLimiter(redis), sessions, UserTokens.from_settings(settings))
        pool = WorkerPool(settings.gateway_eject_failures, settings.gateway_eject_cooldown_s)
        routes = RouteTable((settings.model_alias,), settings.served_model_name)
        refresher = Refresher(settings, redis, pool, routes)
        upstream = Upstream(settings, pool, make_client(settings), metrics.upstream_failure)
        publisher = EventPublisher(settings, hook=metrics.event)
        await publisher.start()
        retriever = None
        if settings.gateway_rag_aliases:
            retriever = Retriever(
                knowledge_base_dir(),
                settings.gateway_rag_aliases,
                settings.gateway_rag_top_k,
                settings.gateway_rag_mode,
                settings.gateway_rag_processes,
                settings.gateway_rag_timeout_s,
            )
            await retriever.warm(settings.gateway_rag_start_timeout_s)
        serving = ChatServing(settings, upstream, routes, sessions, publisher, metrics, gate, retriever)
        try:
            await ensure_dev_key(
                keys,
                settings.dev_key_path,
                settings.gateway_dev_key_rate_per_minute,
                settings.gateway_dev_key_tokens_per_minute,
            )
        except (RedisError, OSError) as exc:
            log.error("could not ensure the dev API key", extra={"error": repr(exc)})
        try:
            await refresher.refresh_once()
        except RedisError as exc:
            log.error("first worker/routes refresh failed", extra={"error": repr(exc)})
        tasks = [asyncio.create_task(refresher.run(), name="flywheel-refresh")]
        log.info(
            "gateway started", extra={"workers": [w.url for w in pool.workers.values()], "alias": settings.model_alias}
        )
        return cls(
            settings,
            metrics,
            redis,
            keys,
            gate,
            sessions,
            pool,
            routes,
            refresher,
            publisher,
            serving,
            upstream,
            tasks,
            retriever,
            completions=CompletionServing(
                serving, resolve_template(settings.gateway_fim_template, settings.base_model_dir)
            ),
        )

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.upstream.aclose()
        if self.retriever is not None:
            self.retriever.close()
        await self.publisher.close()
        await self.redis.aclose()

    async def health(self) -> tuple[bool, dict]:
        ready = self.pool.ready_count()
        workers = {
            "ok": ready > 0,
            "ready": ready,
            "known": len(self.pool.workers),
            "refresh_error": self.refresher.last_error,
        }
        try:
            await asyncio.wait_for(self.redis.ping(), 1.0)
            redis = {"ok": True}
        except Exception as exc:
            redis = {"ok": False, "detail": repr(exc)}
        kafka = await self.publisher.health()
        checks = {"workers": workers, "redis": redis, "kafka": kafka}
        return all(c["ok"] for c in checks.values()), checks
