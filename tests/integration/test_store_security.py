"""The analytics store's HTTP front is read-only, enforced by ClickHouse: hostile statements are refused both over
HTTP and through `flywheel sql`, while analysts' SELECTs and clickhouse-connect keep working.

The front's chDB session runs with `readonly = 1` (writes, setting changes and table functions that reach files,
URLs, other databases or programs are refused by the engine); a statement check before it refuses what readonly
lets through (several statements, `INTO OUTFILE`, `KILL`).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from deploy.cli import main
from schemas import store
from tests.conftest import settings_env

pytestmark = pytest.mark.integration

OUTFILE = "/tmp/flywheel-store-security-outfile"
HOSTILE = [
    # the regex bypass: a heredoc holding a quote hid the `;` from a guard that knew only '...' strings
    "SELECT $$'$$ AS a; CHECK TABLE flywheel.schema_migrations; SELECT $$'$$ AS c",
    "SELECT $tag$ ; $tag$; KILL QUERY WHERE 1",
    "SELECT 1; DROP TABLE flywheel.schema_migrations",
    "SELECT 1 -- x\n; DROP TABLE flywheel.schema_migrations",
    "/* SELECT */ DROP TABLE flywheel.schema_migrations",
    # files, URLs, other databases, programs
    "SELECT * FROM file('{data_dir}/dev-api-key', 'LineAsString')",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM (SELECT * FROM file('/etc/passwd', 'LineAsString'))",
    "SELECT * FROM view(SELECT * FROM file('/etc/passwd', 'LineAsString'))",
    "SELECT * FROM url('http://127.0.0.1:1/health', 'LineAsString')",
    "SELECT * FROM redis('127.0.0.1:6379', 'k', 'k String')",
    "SELECT * FROM mysql('127.0.0.1:3306', 'db', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:5432', 'db', 't', 'u', 'p')",
    "SELECT * FROM mongodb('127.0.0.1:27017', 'db', 't', 'u', 'p', 'x String')",
    "SELECT * FROM sqlite('/tmp/x.db', 't')",
    "SELECT * FROM jdbc('jdbc:x', 't')",
    "SELECT * FROM odbc('DSN=x', 't')",
    "SELECT * FROM remote('127.0.0.1:9000', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1:9440', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM fileCluster('default', '/etc/passwd', 'LineAsString')",
    "SELECT * FROM executable('id', 'TSV', 'x String')",
    "SELECT * FROM s3('https://bucket.s3.amazonaws.com/x.csv', 'CSV', 'x String')",
    "SELECT * FROM hdfs('hdfs://127.0.0.1:9000/x', 'TSV', 'x String')",
    "SELECT * FROM azureBlobStorage('http://127.0.0.1:1/x', 'c', 'b', 'CSV')",
    # turning read-only off
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT * FROM file('/etc/passwd', 'LineAsString') SETTINGS readonly = 0",
    "SELECT * FROM url('http://127.0.0.1:1/x', LineAsString, 'x String') SETTINGS readonly = 2",
    "SET readonly = 0",
    # writes
    "INSERT INTO flywheel.schema_migrations (version, name) VALUES (99, 'x')",
    "INSERT INTO FUNCTION file('/tmp/flywheel-store-security', 'TSV') SELECT 1",
    "DROP TABLE flywheel.schema_migrations",
    "ALTER TABLE flywheel.dead_letters DELETE WHERE 1",
    "TRUNCATE TABLE flywheel.dead_letters",
    "CREATE TABLE flywheel.x (a UInt8) ENGINE = Memory",
    "SYSTEM FLUSH LOGS",
    "KILL QUERY WHERE 1",
    f"SELECT 1 INTO OUTFILE '{OUTFILE}'",
    f"SELECT 1 INTO/**/OUTFILE '{OUTFILE}'",
]


@pytest.fixture(scope="module")
def front(stack):
    migrations = "SELECT count() FROM flywheel.schema_migrations"
    client = store.connect(stack.query_url)
    before = client.query(migrations).result_rows[0][0]
    yield stack
    # nothing was written or dropped
    assert client.query(migrations).result_rows[0][0] == before
    client.close()
    assert not Path(OUTFILE).exists()


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_statement_refused_over_http_and_by_flywheel_sql(front, sql):
    sql = sql.format(data_dir=front.data_dir)
    r = httpx.post(front.query_url, content=sql.encode(), timeout=30)
    assert r.status_code in (403, 500) and "Exception" in r.text, (r.status_code, r.text[:300])
    if r.status_code == 500:  # not refused as read-only: it failed before reaching anything (no such cluster)
        assert "CLUSTER_DOESNT_EXIST" in r.text, r.text[:300]
    result = CliRunner().invoke(main, ["sql", sql], env=settings_env(front))
    assert result.exit_code != 0 and "root:" not in result.output, result.output[-300:]


def test_requests_from_web_pages_are_refused(front):
    r = httpx.post(front.query_url, content=b"SELECT 1", headers={"Origin": "https://evil.example"}, timeout=30)
    assert r.status_code == 403 and "web pages" in r.text


def test_analysts_queries_keep_working(front):
    client = store.connect(front.query_url)
    assert client.query("SELECT count() FROM flywheel.chat_responses").result_rows[0][0] >= 0
    assert client.query("SELECT getSetting('readonly')").result_rows == [(1,)]
    rows = client.query("WITH 2 AS x SELECT x * number FROM numbers(3)").result_rows
    assert [r[0] for r in rows] == [0, 2, 4]
    client.close()
    result = CliRunner().invoke(main, ["sql", "SHOW TABLES FROM flywheel"], env=settings_env(front))
    assert result.exit_code == 0 and "chat_responses" in result.stdout, result.output


def test_queries_need_the_stores_credential(front):
    assert front.store_password_path.stat().st_mode & 0o777 == 0o600
    password = front.store_password_path.read_text().strip()
    for auth in ({}, {"auth": ("analyst", "wrong")}, {"auth": ("default", password)}):
        r = httpx.post(front.store_url, content=b"SELECT 1", timeout=30, **auth)
        assert r.status_code == 401 and r.headers["X-ClickHouse-Exception-Code"] == "516", r.text
    keyed = {"X-ClickHouse-User": "analyst", "X-ClickHouse-Key": password}
    assert httpx.post(front.store_url, content=b"SELECT 1", headers=keyed, timeout=30).text == "1\n"
    assert httpx.post(front.query_url, content=b"SELECT 1", timeout=30).text == "1\n"  # basic auth from the URL
    assert httpx.get(front.store_url + "/ping", timeout=30).status_code == 200
