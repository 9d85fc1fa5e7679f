"""Connection settings shared by every Flywheel process.

Each service declares its own pydantic-settings class that extends `CommonSettings`
with what only it needs; all read `FLYWHEEL_*` environment variables or a `.env` file.
These settings live on the ground floor because every service needs the addresses
of the bus, the store and Redis, and `schemas` is the one package all may import.
Switching from the embedded stack to production is a change of these URLs, not of code.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", env_file=".env", extra="ignore")

    # Where logs, state and the embedded stores live.
    data_dir: Path = Field(Path(".flywheel"), description="data directory (logs, chDB, spool, adapters)")
    # Kafka bootstrap servers; the embedded Tansu broker listens on the first one.
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap.servers")
    # chdb://PATH (embedded, one owner process) or http(s)://host:8123 (ClickHouse server).
    clickhouse_dsn: str = Field("", description="ClickHouse DSN; default chdb://<data_dir>/chdb")
    # Port of the store's ClickHouse-compatible HTTP endpoint in embedded mode.
    clickhouse_http_port: int = Field(8123, description="embedded store's HTTP port")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL")
    log_level: str = Field("INFO", description="log level")

    @property
    def store_dsn(self) -> str:
        """DSN of the analytics store for the process that writes it."""
        return self.clickhouse_dsn or f"chdb://{(self.data_dir / 'chdb').resolve()}"

    @property
    def embedded_store(self) -> bool:
        return self.store_dsn.startswith("chdb://")

    @property
    def query_url(self) -> str:
        """HTTP URL every other process (analysts, CLI, controllers) queries the store at."""
        if self.embedded_store:
            return f"http://127.0.0.1:{self.clickhouse_http_port}"
        return self.store_dsn

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])

    @property
    def redis_port(self) -> int:
        return urlparse(self.redis_url).port or 6379

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"
