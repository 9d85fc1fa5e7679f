"""The local stack for real: up, status, the store's HTTP front, refusals, port conflicts, down."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka.admin import AdminClient

from deploy import stack as local_stack
from deploy.cli import main
from deploy.errors import PortInUseError, ServiceUnhealthyError
from deploy.ports import free_ports
from deploy.supervision import pid_alive
from schemas import store
from schemas.topics import all_topic_names
from tests.conftest import settings_env, stack_settings

pytestmark = pytest.mark.integration


def store_client(settings):
    return store.connect(settings.query_url)


def test_status_is_healthy_and_exits_zero(stack):
    result = CliRunner().invoke(main, ["status"], env=settings_env(stack))
    assert result.exit_code == 0, result.output
    rows = local_stack.status(stack)
    assert {r.name for r in rows} == {"kafka", "redis", "store"}
    assert all(r.healthy and r.state == "RUNNING" and r.pid for r in rows), rows


def test_the_local_redis_refuses_clients_without_its_password(stack):
    import redis

    anonymous = redis.Redis(host="127.0.0.1", port=stack.redis_port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("flywheel:workers:0", '{"url": "http://evil.example", "ready": true}')
    wrong = redis.Redis.from_url(f"redis://:guess@127.0.0.1:{stack.redis_port}/0", socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    assert redis.Redis.from_url(stack.redis_dsn, socket_timeout=5).ping()


def test_every_topic_exists(kafka_bootstrap):
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert set(all_topic_names()) <= set(topics)


def test_store_answers_queries_over_http(stack):
    client = store_client(stack)
    assert client.query("SELECT 1").result_rows == [(1,)]
    assert client.command("SELECT 2") == 2
    tables = {row[0] for row in client.query("SHOW TABLES FROM flywheel").result_rows}
    assert {"chat_requests", "feedback", "dpo_pairs", "schema_migrations"} <= tables
    frame = client.query_df("SELECT number AS n FROM numbers(3)")
    assert list(frame["n"]) == [0, 1, 2]


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE flywheel.chat_requests",
        "INSERT INTO flywheel.schema_migrations (version, name) VALUES (99, 'x')",
        "SELECT 1; DROP TABLE flywheel.feedback",
    ],
)
def test_store_refuses_writes_over_http(stack, statement):
    client = store_client(stack)
    with pytest.raises(DatabaseError) as caught:
        client.command(statement)
    assert caught.value.code == 164
    assert "flywheel store is read-only over HTTP" in str(caught.value)
    assert "chat_requests" in {row[0] for row in client.query("SHOW TABLES FROM flywheel").result_rows}


def test_store_error_text_reaches_the_client(stack):
    with pytest.raises(DatabaseError, match="UNKNOWN_IDENTIFIER"):
        store_client(stack).query("SELECT no_such_column")


def test_port_in_use_is_named(tmp_path):
    kafka_port, redis_port, store_port = free_ports(3)
    settings = stack_settings(tmp_path, kafka_port, redis_port, store_port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", redis_port))
        taken.listen()
        with pytest.raises(PortInUseError) as caught:
            local_stack.up(settings, infra_only=True)
        assert str(caught.value) == f"port {redis_port} (redis) is already in use on 127.0.0.1"
        result = CliRunner().invoke(main, ["up", "--infra-only"], env=settings_env(settings))
    assert result.exit_code == 1
    assert f"port {redis_port} (redis) is already in use on 127.0.0.1" in result.output
    assert not local_stack.layout_for(settings).socket_path.exists()


def test_down_leaves_no_process(tmp_path):
    settings = stack_settings(tmp_path, *free_ports(3))
    settings.data_dir.mkdir(parents=True, mode=0o755, exist_ok=True)
    settings.data_dir.chmod(0o755)
    result = CliRunner().invoke(main, ["up", "--infra-only"], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(settings.data_dir).st_mode) == 0o700  # the dev key, prompts, logs: the owner's
    pids = [row.pid for row in local_stack.status(settings) if row.pid]
    assert len(pids) == 3
    layout = local_stack.layout_for(settings)
    pids.append(int(layout.pidfile.read_text()))

    result = CliRunner().invoke(main, ["down"], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert not layout.socket_path.exists() and not layout.pidfile.exists()

    again = CliRunner().invoke(main, ["down"], env=settings_env(settings))
    assert again.exit_code == 0 and "nothing was running" in again.output
    status = CliRunner().invoke(main, ["status"], env=settings_env(settings))
    assert status.exit_code == 1


def test_a_service_that_cannot_start_is_named_with_its_log(tmp_path):
    settings = stack_settings(tmp_path, *free_ports(3))
    hold = (
        "import chdb.session as s, sys\n"
        "db = s.Session(sys.argv[1]); db.query('SELECT 1'); print(1, flush=True); input()"
    )
    # Another process holds the chDB path, so the store server cannot start.
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "chdb")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline().strip() == b"1"
        with pytest.raises(ServiceUnhealthyError) as caught:
            local_stack.up(settings, infra_only=True, timeout=30)
        assert not local_stack.layout_for(settings).socket_path.exists()  # up took down what it started
    finally:
        holder.kill()
        holder.wait()
        local_stack.down(settings)  # a no-op when up cleaned up after itself, as it should
    assert caught.value.service == "store"
    assert "Cannot lock file" in caught.value.log_tail
    assert str(caught.value).startswith("store is not healthy")
