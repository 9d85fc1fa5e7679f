"""Pure parts of the local stack: supervisord.conf rendering, socket paths, port checks."""

from __future__ import annotations

import configparser
import socket
from pathlib import Path

import pytest

from deploy.conf import SOCKET_PATH_MAX, Layout, render_conf, socket_path_for
from deploy.errors import PortInUseError
from deploy.health import Health
from deploy.ports import check_ports_free, free_ports, port_is_free
from deploy.services import Service


def _ok() -> Health:
    return Health(True, "ok")


BROKER = Service("kafka", "127.0.0.1:9092", _ok, ("/bin/tansu", "broker", "--x", "a b"), 9092, priority=10)
STORE = Service(
    "store",
    "http://127.0.0.1:8123",
    _ok,
    ("python", "-m", "store"),
    8123,
    {"FLYWHEEL_X": 'pct%"q'},
    priority=20,
)
WORKER = Service("worker", "-", _ok, ("python", "-m", "worker"), after_infra=True)
EXTERNAL = Service("redis", "redis://prod:6379/0", _ok)


def _parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_conf_has_one_section_per_managed_service():
    layout = Layout(Path("/data/fw"))
    conf = _parse(render_conf(layout, [BROKER, STORE, WORKER, EXTERNAL]))
    assert [s for s in conf.sections() if s.startswith("program:")] == [
        "program:kafka",
        "program:store",
        "program:worker",
    ]
    assert conf["unix_http_server"]["file"] == "/data/fw/supervisor.sock"
    assert conf["supervisorctl"]["serverurl"] == "unix:///data/fw/supervisor.sock"
    assert conf["supervisord"]["pidfile"] == "/data/fw/supervisord.pid"
    kafka = conf["program:kafka"]
    assert kafka["command"] == "/bin/tansu broker --x 'a b'"
    assert kafka["stdout_logfile"] == "/data/fw/logs/kafka.log"
    assert kafka["autostart"] == "true" and kafka["stopasgroup"] == "true"
    assert conf["program:worker"]["autostart"] == "false"


def test_conf_escapes_percent_and_quotes_environment():
    conf = _parse(render_conf(Layout(Path("/data/100%")), [STORE]))
    assert conf["supervisord"]["logfile"] == "/data/100%%/logs/supervisord.log"
    assert conf["program:store"]["environment"] == 'FLYWHEEL_X="pct%%\\"q"'


def test_socket_stays_in_a_short_data_dir():
    assert socket_path_for(Path("/tmp/fw")) == Path("/tmp/fw/supervisor.sock")


def test_socket_of_a_long_data_dir_moves_to_tmp_deterministically():
    deep = Path("/tmp") / ("x" * 120)
    path = socket_path_for(deep)
    assert path.parent == Path("/tmp") and path == socket_path_for(deep)
    assert len(str(path)) <= SOCKET_PATH_MAX
    assert path != socket_path_for(Path("/tmp") / ("y" * 120))


def test_a_bound_port_is_not_free():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        with pytest.raises(PortInUseError, match=f"port {port} \\(kafka\\) is already in use on 127.0.0.1"):
            check_ports_free([("redis", "127.0.0.1", free_ports(1)[0]), ("kafka", "127.0.0.1", port)])
    assert port_is_free("127.0.0.1", port)


def test_free_ports_are_distinct_and_free():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(port_is_free("127.0.0.1", p) for p in ports)


def test_the_local_redis_gets_a_password_every_client_reads(tmp_path):
    from deploy.services import redis
    from schemas.settings import CommonSettings

    settings = CommonSettings(data_dir=tmp_path, redis_url="redis://127.0.0.1:6390/0")
    assert settings.redis_dsn == "redis://127.0.0.1:6390/0"  # nothing started yet: nothing to ask for
    service = redis(settings)
    password = settings.redis_password_path.read_text().strip()
    assert len(password) >= 32
    assert settings.redis_dsn == f"redis://:{password}@127.0.0.1:6390/0"
    config = Path(service.command[1])
    assert config.read_text() == f'requirepass "{password}"\n'
    assert config.stat().st_mode & 0o777 == settings.redis_password_path.stat().st_mode & 0o777 == 0o600
    assert password not in " ".join(service.command)  # `ps` shows the command line
    redis(settings)
    assert settings.redis_password_path.read_text().strip() == password  # one password per stack


def test_a_redis_url_with_its_own_password_or_host_keeps_it(tmp_path):
    from deploy.services import redis
    from schemas.settings import CommonSettings

    (tmp_path / "redis-password").write_text("generated\n")
    own = CommonSettings(data_dir=tmp_path, redis_url="redis://:mine@127.0.0.1:6390/0")
    assert own.redis_dsn == "redis://:mine@127.0.0.1:6390/0"
    assert Path(redis(own).command[1]).read_text() == 'requirepass "mine"\n'
    remote = CommonSettings(data_dir=tmp_path, redis_url="redis://redis.internal:6379/0")
    assert remote.redis_dsn == "redis://redis.internal:6379/0"
    assert redis(remote).command is None
