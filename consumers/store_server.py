"""The embedded analytics store's owner process: chDB, the ClickHouse sink, a read-only HTTP front.

Only one process may open a chDB data path. In embedded mode this is that process:
it opens `settings.store_dsn` (chdb://PATH), applies the ClickHouse migrations of
`schemas.ddl` at start, runs the ClickHouse sink (consumers.sink) in a thread that writes
through an in-process clickhouse-connect client, and serves a ClickHouse-compatible HTTP
endpoint that is enough for clickhouse-connect's HTTP client (`query`, `command`, `query_df`,
`ping`), so every other process uses the same client code as against a ClickHouse server.

Reads:  FLYWHEEL_* settings (data_dir / clickhouse_dsn, clickhouse_http_port, log_level,
        kafka_bootstrap and FLYWHEEL_SINK_* for the sink); every topic of the registry (the sink).
Writes: the chDB data directory (migrations, the sink's tables and ledger); DLQ topics, offsets.
Serves: http://127.0.0.1:<clickhouse_http_port>/ (POST or GET `query=`), `/ping`, `/metrics`
        (Prometheus: the sink's counters). Read-only, enforced by ClickHouse itself: the front's chDB
        session runs with `readonly = 1`, which refuses every write, every setting change (`SETTINGS
        readonly = 0` too) and every table function that reaches files, URLs, other databases or programs.
        A statement check before it gives clearer errors (only SELECT, WITH, SHOW, DESCRIBE, EXISTS and
        EXPLAIN, one statement) and refuses what readonly lets through: `INTO OUTFILE` (chDB writes the
        file itself). Requests with an `Origin` header (a web page in a browser) are refused. Refusals
        get HTTP 403 and ClickHouse error code 164 (READONLY). Every query needs the credential of the one
        user, `analyst`, whose password the store writes to <data_dir>/store-password (0600) when it first
        starts (`CommonSettings.query_url` carries it); without it: HTTP 401, code 516. `/ping` and `/metrics`
        need none.

Not started with a ClickHouse server (http:// DSN): clients then talk to the server directly,
and the sink runs as its own process (python -m consumers.sink).

Run:  python -m consumers.store_server     (stops cleanly on SIGTERM or Ctrl-C: the sink flushes,
      commits, then the HTTP front and chDB close; FLYWHEEL_SINK_ENABLED=false serves without the sink)
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import signal
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from chdb.session import Session
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumers.settings import SinkSettings
from schemas import ddl, store
from schemas.logs import setup_logging
from schemas.settings import STORE_USER, CommonSettings, ensure_secret

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
READ_ONLY_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})
READONLY_CODE = 164  # ClickHouse's READONLY error code
AUTHENTICATION_FAILED_CODE = 516  # ClickHouse's AUTHENTICATION_FAILED
UNKNOWN_ERROR_CODE = 1000  # ClickHouse's POCO_EXCEPTION / unknown: used for non-chDB failures

# Comments and quoted text (string literals, heredocs `$tag$...$tag$`, quoted identifiers), matched so that their
# content cannot hide a `;` or a keyword from the statement check.
_COMMENT_OR_QUOTED = re.compile(
    r"""--[^\n]*|\#[^\n]*|/\*.*?(?:\*/|\Z)|\$([A-Za-z0-9_]*)\$.*?(?:\$\1\$|\Z)"""
    r"""|'(?:[^'\\]|\\.|'')*(?:'|\Z)|"(?:[^"\\]|\\.|"")*(?:"|\Z)|`(?:[^`\\]|\\.|``)*(?:`|\Z)""",
    re.DOTALL,
)
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*\Z", re.IGNORECASE)
# Anywhere in the raw text, quoted or not: no analyst query needs the word, and no quoting trick can hide it.
_OUTFILE = re.compile(r"OUTFILE", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")


def _blank_out(match: re.Match) -> str:
    text = match.group(0)
    return " " if text[0] in "-#/" else text[0] + text[-1]


def read_only_refusal(sql: str) -> str | None:
    """Why `sql` may not run over HTTP, or None when it is a single read-only statement."""
    bare = _COMMENT_OR_QUOTED.sub(_blank_out, sql).strip().rstrip(";").strip()
    if not bare:
        return "empty query"
    if ";" in bare:
        return "only one statement per request is allowed"
    first = re.match(r"[\s(]*([A-Za-z]+)", bare)
    keyword = first.group(1).upper() if first else ""
    if keyword not in READ_ONLY_KEYWORDS:
        return f"{keyword or 'this'} statements are not allowed; only {', '.join(sorted(READ_ONLY_KEYWORDS))}"
    if _OUTFILE.search(sql):
        return "INTO OUTFILE is not allowed"
    return None


def output_format(sql: str, default_format: str | None) -> str:
    """The format a query's result comes back in: its FORMAT clause, else default_format, else TSV."""
    bare = _COMMENT_OR_QUOTED.sub(_blank_out, sql).strip()
    match = _FORMAT_CLAUSE.search(bare)
    if match:
        return match.group(1)
    return default_format or "TabSeparated"


def chdb_path(store_dsn: str) -> str:
    """The chDB location of a chdb:// DSN (chdb:///abs/path or chdb://memory)."""
    if not store_dsn.startswith("chdb://"):
        raise ValueError(f"not a chdb:// DSN: {store_dsn!r}")
    location = store_dsn.removeprefix("chdb://")
    return ":memory:" if location in ("", "memory") else location


@dataclass(frozen=True)
class QueryResult:
    body: bytes
    format: str
    summary: dict[str, str]


class QueryError(Exception):
    """A query that failed; `status` and `code` become the HTTP status and ClickHouse error code."""

    def __init__(self, message: str, status: int = 500, code: int = UNKNOWN_ERROR_CODE):
        super().__init__(message)
        self.status = status
        self.code = code


class StoreEngine:
    """One chDB session on the data path, shared by all request threads behind one lock."""

    def __init__(self, path: str):
        self._session = Session(path)
        self._lock = threading.Lock()
        self._database = "default"
        # This session only answers the HTTP front: ClickHouse enforces read-only on everything it runs (the sink
        # and the migrations write through their own connections to the same path).
        self._run("SET readonly = 1", "TabSeparated", {})
        self.timezone = self._run("SELECT timezone()", "TabSeparated", {}).bytes().decode().strip()

    def _run(self, sql: str, fmt: str, params: dict[str, str]):
        try:
            return self._session.query(sql, fmt, params=params or None)
        except Exception as exc:  # chDB raises ChdbError / RuntimeError carrying "Code: N. DB::Exception: ..."
            text = str(exc)
            found = _ERROR_CODE.search(text)
            code = int(found.group(1)) if found else UNKNOWN_ERROR_CODE
            raise QueryError(text, status=403 if code == READONLY_CODE else 500, code=code) from exc

    def execute(self, sql: str, fmt: str, database: str, params: dict[str, str]) -> QueryResult:
        refusal = read_only_refusal(sql)
        if refusal:
            raise QueryError(
                f"Code: {READONLY_CODE}. DB::Exception: flywheel store is read-only over HTTP: {refusal}. (READONLY)",
                status=403,
                code=READONLY_CODE,
            )
        with self._lock:
            if database != self._database:
                self._run(f"USE `{database.replace('`', '``')}`", "TabSeparated", {})
                self._database = database
            result = self._run(sql, fmt, params)
        body = result.bytes()
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": "0",
            "written_bytes": "0",
            "result_bytes": str(len(body)),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        return QueryResult(body, fmt, summary)

    def close(self) -> None:
        with self._lock:
            self._session.close()


class ClickHouseHandler(BaseHTTPRequestHandler):
    """Just enough of ClickHouse's HTTP interface: query text in the body or `query=`, settings as params."""

    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools connections
    server_version = "flywheel-store"
    engine: StoreEngine  # set on the subclass built by make_server
    password: str  # the one user's (STORE_USER), set by make_server

    def do_GET(self) -> None:
        path, params = self._parse()
        if path in ("/ping", "/") and "query" not in params:
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if path == "/metrics":
            self._send(200, generate_latest(), {"Content-Type": CONTENT_TYPE_LATEST})
            return
        self._query(params, params.get("query", ""))

    def do_POST(self) -> None:
        _, params = self._parse()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "identity") not in ("", "identity"):
            self._error(QueryError("Code: 1000. DB::Exception: compressed request bodies are not supported", 400))
            return
        sql = "\n".join(part for part in (params.get("query", ""), body.decode()) if part)
        self._query(params, sql)

    def _parse(self) -> tuple[str, dict[str, str]]:
        url = urlsplit(self.path)
        return url.path, dict(parse_qsl(url.query, keep_blank_values=True))

    def _credential(self, params: dict[str, str]) -> tuple[str | None, str | None]:
        """(user, password) as ClickHouse's HTTP interface takes them: basic auth, X-ClickHouse-User/-Key headers,
        or `user`/`password` parameters."""
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except ValueError:
                return None, None
            return user, password
        if self.headers.get("X-ClickHouse-User") is not None:
            return self.headers.get("X-ClickHouse-User"), self.headers.get("X-ClickHouse-Key") or ""
        return params.get("user"), params.get("password")

    def _query(self, params: dict[str, str], sql: str) -> None:
        query_id = params.get("query_id") or str(uuid.uuid4())
        user, password = self._credential(params)
        if user != STORE_USER or not hmac.compare_digest((password or "").encode(), self.password.encode()):
            log.info("query refused: no valid credential", extra={"query_id": query_id, "user": user})
            self._error(
                QueryError(
                    f"Code: 516. DB::Exception: {user or 'default'}: Authentication failed: password is incorrect, "
                    "or there is no user with such name",
                    401,
                    AUTHENTICATION_FAILED_CODE,
                ),
                query_id,
            )
            return
        if self.headers.get("Origin") is not None:
            # Browsers send Origin on cross-site requests: a web page must not reach the store; clients never do.
            self._error(QueryError("Code: 164. DB::Exception: requests from web pages are refused", 403, 164))
            return
        fmt = output_format(sql, params.get("default_format"))
        # Server-side bound parameters ({name:Type}) arrive as param_<name>; other settings
        # (wait_end_of_query, session_id, ...) shape the HTTP exchange and have no chDB meaning.
        bound = {key.removeprefix("param_"): value for key, value in params.items() if key.startswith("param_")}
        try:
            result = self.engine.execute(sql, fmt, params.get("database") or "default", bound)
        except QueryError as exc:
            log.info("query refused or failed", extra={"query_id": query_id, "code": exc.code, "error": str(exc)})
            self._error(exc, query_id)
            return
        self._send(
            200,
            result.body,
            {
                "Content-Type": "application/octet-stream",
                "X-ClickHouse-Format": result.format,
                "X-ClickHouse-Timezone": self.engine.timezone,
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Summary": json.dumps(result.summary),
            },
        )

    def _error(self, exc: QueryError, query_id: str = "") -> None:
        headers = {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": str(exc.code)}
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        self._send(exc.status, f"{exc}\n".encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("http " + format, *args)


def make_server(engine: StoreEngine, port: int, password: str, host: str = HOST) -> ThreadingHTTPServer:
    handler = type("BoundClickHouseHandler", (ClickHouseHandler,), {"engine": engine, "password": password})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def apply_migrations(store_dsn: str) -> list[int]:
    """Run `schemas.ddl.migrate` through an in-process clickhouse-connect client on the data path."""
    client = store.connect(store_dsn)
    try:
        return ddl.migrate(client)
    finally:
        client.close()


def start_sink(settings: SinkSettings, stop: threading.Event):
    """Run the ClickHouse sink in a thread on an in-process client of the same chDB path.

    If the sink dies, `stop` is set so the whole process exits non-zero and the supervisor
    restarts it: a store that silently stopped ingesting would be worse than a restart.
    """
    from consumers.sink import Sink, store_client

    sink = Sink(settings, store_client(settings))

    def run() -> None:
        try:
            sink.run()
        except BaseException:
            log.exception("the sink failed; stopping the store process")
            sink.failed = True
            stop.set()

    sink.failed = False
    thread = threading.Thread(target=run, name="clickhouse-sink", daemon=True)
    thread.start()
    return sink, thread


def serve(settings: CommonSettings, stop: threading.Event) -> int:
    """Open the store, migrate, run the sink (if enabled), serve until `stop` is set, then close everything.

    Returns the process exit status: 1 when the sink failed, else 0.
    """
    path = chdb_path(settings.store_dsn)
    if path != ":memory:":
        Path(path).mkdir(parents=True, exist_ok=True)
    try:
        applied = apply_migrations(settings.store_dsn)
        engine = StoreEngine(path)
    except Exception as exc:
        # The usual cause: another process has the path open (chDB allows one process per path).
        log.error("cannot open the store (is another process holding it?)", extra={"path": path, "error": str(exc)})
        raise SystemExit(1) from exc
    log.info("migrations applied", extra={"versions": applied, "path": path})
    server = make_server(engine, settings.clickhouse_http_port, ensure_secret(settings.store_password_path))
    thread = threading.Thread(target=server.serve_forever, name="store-http", daemon=True)
    thread.start()
    log.info("store serving", extra={"url": f"http://{HOST}:{settings.clickhouse_http_port}", "path": path})
    sink = sink_thread = None
    if isinstance(settings, SinkSettings) and settings.sink_enabled:
        sink, sink_thread = start_sink(settings, stop)
    try:
        stop.wait()
    finally:
        if sink is not None:
            sink.stop()  # flush complete batches and commit before the store closes
            sink_thread.join(settings.sink_shutdown_timeout_s + 10)
        server.shutdown()
        server.server_close()
        engine.close()
        log.info("store stopped")
    return 1 if sink is not None and sink.failed else 0


def main() -> None:
    settings = SinkSettings()
    setup_logging(settings.log_level)
    if not settings.embedded_store:
        raise SystemExit(f"store_server only runs for a chdb:// store; this DSN is {settings.store_dsn!r}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    raise SystemExit(serve(settings, stop))


if __name__ == "__main__":
    main()
