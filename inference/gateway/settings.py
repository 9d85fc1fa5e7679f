"""Settings of the gateway (inference/gateway/app.py): where it listens, which upstreams, timeouts, spool.

Every field reads `FLYWHEEL_<NAME>` (e.g. `FLYWHEEL_GATEWAY_UPSTREAMS=http://127.0.0.1:8000`) or `.env`.
The bus, Redis and data directory come from CommonSettings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from producers.settings import ProducerSettings


class GatewaySettings(ProducerSettings):
    # Where uvicorn binds.
    gateway_host: str = Field("127.0.0.1", description="gateway bind address")
    gateway_port: int = Field(8080, description="gateway port")
    # uvicorn worker processes. Each has its own connection pools, caches and producer; /metrics shows the
    # numbers of the process that answers it. 1 unless measured better: on a 2-core machine that also runs
    # the inference workers, a second gateway process competes with them (bench/gateway.py).
    gateway_workers: int = Field(1, ge=1, description="gateway processes (uvicorn workers)")
    # Static upstream OpenAI-compatible servers (comma-separated or JSON list): production
    # deployments and benchmarks against a stub. Merged with the workers found in Redis.
    gateway_upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="static upstream base URLs"
    )
    # Request fields of /v1/chat/completions forwarded upstream beyond the declared ones (protocol.py):
    # further vLLM extensions, or a test upstream's own (comma-separated or JSON list). Others get 422.
    gateway_extra_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="extra /v1/chat/completions fields forwarded upstream"
    )
    # Hosts a worker found in Redis may live on (comma-separated or JSON list): a readiness record naming any
    # other host is ignored, so whoever can write to Redis cannot point the gateway's prompts elsewhere.
    gateway_worker_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost"], description="hosts discovered workers may be on"
    )
    # Also route to the ready workers registered in Redis (`flywheel:workers:<index>`).
    gateway_discover_workers: bool = Field(True, description="discover workers from Redis")
    # How often the worker list and the routing tables are re-read from Redis (background task).
    gateway_refresh_s: float = Field(1.0, gt=0, description="worker/routes refresh interval")
    # The alias clients ask for is CommonSettings.model_alias (versions from `flywheel:routes:<alias>`);
    # while its routing table is empty it maps to the base model's served_model_name.
    # Prepended to the session API's history (one per deployment).
    gateway_system_prompt: str = Field(
        "You are a helpful customer service assistant. Answer product questions, guide returns, "
        "and say so when you do not know.",
        description="system prompt of the session API",
    )
    # Retrieval-augmented answers (inference/gateway/rag.py): the aliases whose deployments are marked `rag` get the
    # top passages of the knowledge base (FLYWHEEL_KB_DIR, `flywheel kb add`) in their prompt, and their sources in
    # the response. 3 passages of about 600 characters: about 500 prompt tokens, which SmolLM2 on 2 CPU cores
    # reads in under a second; more passages dilute what a small model attends to.
    gateway_rag_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="aliases answered with knowledge-base passages (marked rag)"
    )
    gateway_rag_top_k: int = Field(3, ge=1, le=20, description="passages given to a rag answer")
    gateway_rag_mode: Literal["hybrid", "dense", "bm25"] = Field("hybrid", description="retriever of rag answers")
    # Lookups run in processes of their own (embedding a query is CPU work); one is enough below ~50 lookups/s.
    gateway_rag_processes: int = Field(1, ge=1, description="retrieval processes per gateway process")
    gateway_rag_timeout_s: float = Field(5.0, gt=0, description="longest wait for a lookup (then no passages)")
    # Each process imports torch and loads the embedding model and index before the gateway answers: about 5 s on
    # an idle 2-core host, 15 s or more beside a busy stack.
    gateway_rag_start_timeout_s: float = Field(
        120.0, gt=0, description="longest wait at start for the retrieval processes to load"
    )
    # Session history: turns kept and their time to live.
    gateway_history_turns: int = Field(10, ge=0, description="turns of history sent upstream")
    # Upstream timeouts: connecting (a failure there is retried on another worker), waiting for
    # each chunk / the answer, and the whole non-streamed request.
    gateway_connect_timeout_s: float = Field(2.0, gt=0, description="upstream connect timeout")
    gateway_read_timeout_s: float = Field(60.0, gt=0, description="upstream read timeout per chunk")
    gateway_request_timeout_s: float = Field(120.0, gt=0, description="whole upstream request timeout")
    # Upstream tries per request on connection failures (each on a different worker if possible).
    gateway_max_attempts: int = Field(3, ge=1, description="upstream attempts on connection failure")
    # Consecutive connection failures that eject a worker, and how long it stays out.
    gateway_eject_failures: int = Field(1, ge=1, description="failures before ejection")
    gateway_eject_cooldown_s: float = Field(5.0, ge=0, description="ejection cool-down")
    # Shared HTTP/1.1 keep-alive pool to the upstreams.
    gateway_max_connections: int = Field(512, ge=1, description="upstream connection pool size")
    # Idle upstream connections are dropped before the worker drops them: vLLM (uvicorn) closes idle
    # keep-alive connections after 5 s, and a request written into a just-closed one fails.
    gateway_upstream_keepalive_s: float = Field(4.0, gt=0, description="idle upstream connection lifetime")
    # Redis connections: a burst (requests piling up while vLLM loads an adapter) waits for one
    # up to the timeout instead of failing at once.
    gateway_redis_max_connections: int = Field(512, ge=1, description="Redis connection pool size")
    gateway_redis_pool_timeout_s: float = Field(2.0, gt=0, description="wait for a free Redis connection")
    # Verified API keys are cached this long (a revoked key works at most this much longer).
    gateway_key_cache_s: float = Field(5.0, ge=0, description="API key verification cache")
    # Spool: events the broker did not take, as JSON lines; fsync'd in batches at this interval.
    gateway_spool_flush_s: float = Field(0.2, gt=0, description="spool fsync interval")
    # How often the publisher probes a broker it lost, to replay the spool.
    gateway_broker_probe_s: float = Field(1.0, gt=0, description="broker probe interval when down")
    # uvicorn access log (off by default: it costs throughput; requests are counted in /metrics).
    gateway_access_log: bool = Field(False, description="uvicorn access log")
    # E-mail addresses and phone numbers in published events (prompts, answers, feedback) become [EMAIL] and
    # [PHONE]: the store, the spool and training data never hold them. The session history in Redis keeps the text.
    gateway_mask_pii: bool = Field(True, description="mask e-mails and phone numbers in published events")
    # The interactive docs (/docs) and the OpenAPI schema (/openapi.json) describe every route to whoever asks.
    gateway_docs: bool = Field(False, description="serve /docs and /openapi.json")
    # /metrics names model versions and counts per route; /health's details name workers and errors. Both are for
    # operators: /metrics needs an admin key (Prometheus sends it as a bearer token) unless this is on, e.g. for a
    # scraper on a private network; /health answers everyone with its status and each check's ok, the details
    # only with an admin key.
    gateway_public_metrics: bool = Field(False, description="serve /metrics without an admin key")
    # Signed-in end users (inference/gateway/user_tokens.py): a bearer token that is a JWT is verified against this
    # `iss` and `aud`, with the key in a PEM file (or an HS256 secret) or the provider's JWKS URL; its `sub` is the
    # user. User tokens are off while FLYWHEEL_GATEWAY_JWT_ISSUER is empty.
    gateway_jwt_issuer: str = Field("", description="issuer (iss) of user JWTs ('': user tokens off)")
    gateway_jwt_audience: str = Field("flywheel", description="audience (aud) user JWTs must name")
    gateway_jwt_key_file: Path | None = Field(None, description="PEM public key (or HS256 secret) of user JWTs")
    gateway_jwt_jwks_url: str = Field("", description="JWKS URL of the identity provider (instead of a key file)")
    gateway_jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["RS256", "ES256"], description="accepted JWT signature algorithms"
    )
    gateway_jwt_rate_per_minute: int = Field(60, ge=1, description="requests per minute of each signed-in user")
    gateway_jwt_tokens_per_minute: int = Field(
        20_000, ge=0, description="tokens per minute of each signed-in user (0: no token limit)"
    )
    # The local stack's own key (<data_dir>/dev-api-key, every scope): limited like a busy application's key, far
    # above what a 2-core stack serves (about 20 requests/s of short answers), so that a runaway script is stopped.
    gateway_dev_key_rate_per_minute: int = Field(6000, ge=1, description="the dev key's requests per minute")
    gateway_dev_key_tokens_per_minute: int = Field(
        600_000, ge=0, description="the dev key's prompt + completion tokens per minute (0: no token limit)"
    )
    # Feedback is training data: each user (per key) may send this many per minute (429 above), so that one user
    # cannot fill a retrain job with their own corrections in a burst.
    gateway_feedback_per_user_minute: int = Field(30, ge=1, description="feedback requests per user per minute")
    # Fill-in-the-middle prompts of /v1/completions (with `suffix`) and /code/complete (inference/gateway/fim.py):
    # "auto" reads the base model's tokenizer files once at start and uses its FIM tokens (StarCoder's <fim_prefix>,
    # Qwen2.5-Coder's <|fim_prefix|>) when it has them, else the plain-text template ("plain"; SmolLM2 and the tiny
    # model have none). Name the template where the model's directory is not on the gateway's machine.
    gateway_fim_template: Literal["auto", "plain", "starcoder", "qwen"] = Field(
        "auto", description="fill-in-the-middle prompt template (auto: from the base model's tokenizer)"
    )
    # Bounds on what a request may make the gateway read: larger ones are refused before their body is read.
    gateway_max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body (413 above)")
    gateway_max_header_bytes: int = Field(32_768, ge=1024, description="largest request head (431 above)")
    # CPython's cyclic GC runs a generation-0 pass every 700 net allocations by default; a request allocates
    # hundreds of short-lived objects, nearly all freed by reference counting. A higher threshold (and the
    # start-up objects frozen out of the collector's walks): bench/gateway.py (a), 5 interleaved rounds,
    # 704 vs 658 req/s at c64 (ahead in every round), 1.40 vs 1.47 ms CPU per request. 0: CPython's default.
    gateway_gc_gen0: int = Field(100_000, ge=0, description="GC generation-0 threshold (0: CPython default)")
    producer_client_id: str = Field("flywheel-gateway", description="Kafka client.id")
    # Events wait up to this long in librdkafka to share a produce request. The SDK's 5 ms meant a produce
    # request (and a broker round) every few requests at gateway rates: 100 ms cut the gateway's CPU per
    # request by ~25% and the broker's by ~35% (bench/gateway.py); events are for analytics, not latency.
    producer_linger_ms: float = Field(100.0, ge=0, description="linger.ms of the gateway's producer")

    @field_validator(
        "gateway_upstreams",
        "gateway_extra_fields",
        "gateway_worker_hosts",
        "gateway_jwt_algorithms",
        "gateway_rag_aliases",
        mode="before",
    )
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def dev_key_path(self) -> Path:
        return self.data_dir / "dev-api-key"
