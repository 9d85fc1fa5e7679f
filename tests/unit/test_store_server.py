"""The store server's pure parts: which statements may run over HTTP, result formats, DSN paths."""

from __future__ import annotations

import pytest

from consumers.store_server import chdb_path, output_format, read_only_refusal


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select 1 FORMAT Native",
        "  \n SELECT 1;",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "SHOW TABLES FROM flywheel",
        "DESCRIBE TABLE flywheel.feedback",
        "DESC flywheel.feedback",
        "EXISTS TABLE flywheel.schema_migrations",
        "EXPLAIN SELECT 1",
        "-- a comment\nSELECT 1",
        "/* DROP TABLE x; */ SELECT 1",
        "SELECT 'a; DROP TABLE x'",
        "SELECT $$ a; DROP TABLE x $$, $q$it's$q$",
        "SELECT 'a\\'; DROP TABLE x; --'",
        "SELECT `weird;name` FROM t",
        "SELECT name, value, readonly FROM system.settings LIMIT 10000 FORMAT Native",
    ],
)
def test_read_only_statements_pass(sql):
    assert read_only_refusal(sql) is None


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("", "empty query"),
        ("  ;  ", "empty query"),
        ("-- only a comment", "empty query"),
        ("INSERT INTO t VALUES (1)", "INSERT statements are not allowed"),
        ("DROP TABLE flywheel.feedback", "DROP statements are not allowed"),
        ("ALTER TABLE t DELETE WHERE 1", "ALTER statements are not allowed"),
        ("CREATE TABLE t (a UInt8) ENGINE=Memory", "CREATE statements are not allowed"),
        ("TRUNCATE TABLE t", "TRUNCATE statements are not allowed"),
        ("OPTIMIZE TABLE t FINAL", "OPTIMIZE statements are not allowed"),
        ("SET max_threads = 1", "SET statements are not allowed"),
        ("USE flywheel", "USE statements are not allowed"),
        ("SYSTEM FLUSH LOGS", "SYSTEM statements are not allowed"),
        ("/* SELECT */ DROP TABLE t", "DROP statements are not allowed"),
        ("SELECT 1; DROP TABLE t", "only one statement"),
        ("SELECT 1;;SELECT 2", "only one statement"),
        ("SELECT $$'$$ AS a; CHECK TABLE flywheel.schema_migrations; SELECT $$'$$ AS c", "only one statement"),
        ("SELECT $tag$ ; $tag$; KILL QUERY WHERE 1", "only one statement"),
        ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
        ("SELECT 1 INTO/**/OUTFILE '/tmp/x'", "INTO OUTFILE"),
        ("SELECT $$'$$ INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ],
)
def test_other_statements_are_refused(sql, reason):
    refusal = read_only_refusal(sql)
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize(
    ("sql", "default", "expected"),
    [
        ("SELECT 1", None, "TabSeparated"),
        ("SELECT 1", "JSONEachRow", "JSONEachRow"),
        ("SELECT 1 FORMAT Native", None, "Native"),
        ("SELECT 1\n FORMAT   Arrow ;", "CSV", "Arrow"),
        ("SELECT 'FORMAT Native'", None, "TabSeparated"),
    ],
)
def test_output_format(sql, default, expected):
    assert output_format(sql, default) == expected


@pytest.mark.parametrize(
    ("dsn", "path"),
    [("chdb:///var/fw/chdb", "/var/fw/chdb"), ("chdb://memory", ":memory:"), ("chdb://", ":memory:")],
)
def test_chdb_path(dsn, path):
    assert chdb_path(dsn) == path


def test_chdb_path_rejects_http():
    with pytest.raises(ValueError):
        chdb_path("http://clickhouse:8123")
