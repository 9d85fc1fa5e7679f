"""Router logic: least outstanding requests, ejection with cool-down, the retry rule, version resolution."""

from __future__ import annotations

import pytest

from inference.gateway.router import NoWorkerAvailable, RouteTable, WorkerPool, may_retry
from inference.routing import Route, bucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(*urls: str, failures: int = 1, cooldown: float = 5.0) -> tuple[WorkerPool, FakeClock]:
    clock = FakeClock()
    p = WorkerPool(failures, cooldown, clock)
    p.set_workers([], urls)
    return p, clock


def test_least_outstanding_wins():
    p, _ = pool("http://a", "http://b", "http://c")
    a = p.pick()
    b = p.pick()
    c = p.pick()
    assert {a.url, b.url, c.url} == {"http://a", "http://b", "http://c"}  # spread while equal
    p.release(b)
    assert p.pick().url == b.url  # the only one with nothing outstanding
    assert a.outstanding == 1 and b.outstanding == 1 and c.outstanding == 1


def test_equal_load_rotates():
    p, _ = pool("http://a", "http://b")
    seen = []
    for _ in range(4):
        w = p.pick()
        seen.append(w.url)
        p.release(w)
    assert set(seen) == {"http://a", "http://b"}


def test_release_never_negative():
    p, _ = pool("http://a")
    w = p.pick()
    p.release(w)
    p.release(w)
    assert w.outstanding == 0


def test_ejection_and_cooldown():
    p, clock = pool("http://a", "http://b", cooldown=5.0)
    a = p.workers["http://a"]
    assert p.failed(a) is True  # one failure ejects (eject_failures=1)
    assert p.ready_count() == 1
    for _ in range(5):
        w = p.pick()
        assert w.url == "http://b"
        p.release(w)
    clock.now += 5.0  # cool-down over: a is back on probation
    assert p.ready_count() == 2
    assert p.failed(a) is True  # a failure on probation ejects again at once
    assert p.ready_count() == 1


def test_success_resets_failures():
    p, _ = pool("http://a", failures=2)
    a = p.workers["http://a"]
    assert p.failed(a) is False
    p.succeeded(a)
    assert p.failed(a) is False  # counted from zero again
    assert p.failed(a) is True


def test_all_ejected_raises():
    p, _ = pool("http://a")
    p.failed(p.workers["http://a"])
    with pytest.raises(NoWorkerAvailable, match="ejected"):
        p.pick()


def test_no_workers_raises():
    p = WorkerPool()
    with pytest.raises(NoWorkerAvailable, match="no inference worker"):
        p.pick()


def test_exclude_tried_workers():
    p, _ = pool("http://a", "http://b")
    first = p.pick()
    second = p.pick(exclude=[first.url])
    assert second.url != first.url
    with pytest.raises(NoWorkerAvailable, match="failed for this request"):
        p.pick(exclude=["http://a", "http://b"])


def test_set_workers_keeps_state_and_merges_static():
    p, _ = pool("http://static")
    p.set_workers(["http://w0/", "http://w1"], ["http://static"])
    w0 = p.pick(exclude=["http://static", "http://w1"])
    p.set_workers(["http://w0"], ["http://static"])  # w1 gone, w0 kept with its counters
    assert set(p.workers) == {"http://static", "http://w0"}
    assert p.workers["http://w0"] is w0 and w0.outstanding == 1
    assert p.workers["http://static"].static


@pytest.mark.parametrize(
    "connection_failed, sent, attempt, max_attempts, expected",
    [
        (True, False, 1, 3, True),  # connection failure before any token: retry
        (True, False, 3, 3, False),  # out of attempts
        (True, True, 1, 3, False),  # a token already reached the client: never
        (False, False, 1, 3, False),  # a timeout or an HTTP error is not retried
    ],
)
def test_retry_rule(connection_failed, sent, attempt, max_attempts, expected):
    assert may_retry(connection_failed, sent, attempt, max_attempts) is expected


def test_empty_table_maps_alias_to_base_model():
    table = RouteTable(("support",), "tiny")
    assert table.resolve("support", "u1") == ("support", "tiny")
    assert table.resolve(None, "u1") == ("support", "tiny")  # default alias
    assert table.resolve("tiny", "u1") == ("support", "tiny")  # a version is served as asked


def test_sticky_canary_split():
    table = RouteTable(("support",), "tiny")
    table.update("support", [Route("tiny", 90), Route("support@v2", 10)])
    users = [f"user-{i}" for i in range(300)]
    chosen = {u: table.resolve("support", u)[1] for u in users}
    assert chosen == {u: table.resolve("support", u)[1] for u in users}  # sticky
    # ordered by version name: "support@v2" takes buckets 0..9
    for u in users:
        assert chosen[u] == ("support@v2" if bucket(u) < 10 else "tiny")
    assert table.resolve("support@v2", "anyone") == ("support", "support@v2")


def test_unknown_model():
    table = RouteTable(("support",), "tiny")
    with pytest.raises(LookupError, match="does not exist"):
        table.resolve("gpt-4", "u1")


def test_pick_only_workers_with_the_version_loaded():
    pool = WorkerPool()
    pool.set_workers({"http://a": frozenset({"tiny", "support@v2"}), "http://b": frozenset({"tiny"})})

    def pick(version):
        worker = pool.pick(version=version)
        pool.release(worker)
        return worker.url

    assert {pick("support@v2") for _ in range(4)} == {"http://a"}
    assert {pick("tiny") for _ in range(4)} == {"http://a", "http://b"}
    with pytest.raises(NoWorkerAvailable, match="support@v3"):
        pool.pick(version="support@v3")


def test_static_upstreams_serve_any_version():
    pool = WorkerPool()
    pool.set_workers({}, static=["http://stub"])
    assert pool.pick(version="anything@v9").url == "http://stub"


def test_last_resort_includes_ejected_and_tried_workers():
    p, _ = pool("http://a")
    a = p.workers["http://a"]
    p.failed(a)  # ejected after a stale keep-alive connection, say
    with pytest.raises(NoWorkerAvailable):
        p.pick(exclude=["http://a"])
    assert p.pick(version=None, include_ejected=True).url == "http://a"
