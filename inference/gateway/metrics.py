"""Prometheus metrics of the gateway, in a registry of its own (one per app: tests build several).

Exposed at `GET /metrics`. Names start with `flywheel_gateway_`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "flywheel_gateway_requests",
            "Requests answered, by route, status and model version",
            ["route", "status", "model_version"],
            registry=r,
        )
        self.latency = Histogram(
            "flywheel_gateway_request_latency_seconds",
            "Request latency (to the last byte)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "flywheel_gateway_ttft_seconds",
            "Time to first token of streamed answers",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.completion_tokens = Counter(
            "flywheel_gateway_completion_tokens", "Completion tokens generated", ["model_version"], registry=r
        )
        self.prompt_tokens = Counter(
            "flywheel_gateway_prompt_tokens", "Prompt tokens sent", ["model_version"], registry=r
        )
        self.tokens_per_s = Histogram(
            "flywheel_gateway_tokens_per_second",
            "Completion tokens per second per answer",
            ["model_version"],
            buckets=TPS_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("flywheel_gateway_in_flight", "Requests being served", registry=r)
        self.active_sessions = Gauge(
            "flywheel_gateway_active_sessions", "Sessions with a turn within the history TTL", registry=r
        )
        self.events = Counter(
            "flywheel_gateway_events",
            "Events by outcome: published, failed, spooled, replayed",
            ["outcome"],
            registry=r,
        )
        self.upstream_failures = Counter(
            "flywheel_gateway_upstream_failures", "Upstream connection failures", ["worker"], registry=r
        )
        self.workers_ready = Gauge("flywheel_gateway_workers_ready", "Workers available (not ejected)", registry=r)
        self.spool_backlog = Gauge("flywheel_gateway_spool_backlog", "Events waiting in the disk spool", registry=r)
        for outcome in ("published", "failed", "spooled", "replayed"):
            self.events.labels(outcome)
        self._events = {o: self.events.labels(o) for o in ("published", "failed", "spooled", "replayed")}

    def event(self, outcome: str, count: int) -> None:
        """Publisher hook (called from the event loop and librdkafka's poll thread)."""
        if count:
            self._events[outcome].inc(count)

    def upstream_failure(self, worker: str) -> None:
        """Upstream hook: one connection failure of `worker` (its URL)."""
        self.upstream_failures.labels(worker=worker).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
