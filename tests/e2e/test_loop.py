"""The whole loop on CPU with the real local stack (tests/e2e/conftest.py), under steady traffic throughout.

One module, three tests in order, sharing one stack and one steady load through the gateway (`traffic`:
open-loop, >= 20 requests/s, max_tokens 4, 200 sticky users who rate every answer they get):

(a) the good loop: users ask support questions with the official `openai` client and thumb the answers down with
    corrections through `/feedback` -> DPO pairs -> RetrainJob requested (exactly those pairs) -> started ->
    succeeded, accepted by the gate -> adapter_ready -> loaded on the vLLM worker -> canary 5/20/50/100 while
    the steady users are happy with every version (thumbs up) -> promoted; `/v1/models` lists the promoted version
    for the alias and new response events (and answers) name it; `flywheel.v_loop_stages` has the job's stage times.
(c) a bad adapter: the good job's pairs with chosen and rejected swapped, trained by `flywheel train dpo --pairs`
    (continuing from the promoted adapter, like a real job; the gate's verdict is reported but not obeyed), announced
    by a Deployment adapter_ready produced here (as if it had passed the gate); the steady users routed to it thumb
    it down, the others thumb up: the canary analysis rolls it back, it never reaches 100% (Deployment events and
    the sampled routing table `flywheel:routes:support`), and it is unloaded from the worker.
(b) checked last, over everything above: zero failed requests through adapter load, canary steps, promotion,
    rollback and unload; every answer's response event names exactly one version, one that was routed while the
    request ran (and the same as the answer's X-Model-Version).

Durations come from settings (FLYWHEEL_CANARY_STEP_S, ...; FLYWHEEL_E2E_RATE): see tests/e2e/conftest.py.
Run: `pytest -m e2e tests/e2e -s` (about 8-12 minutes on 2 shared cores).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.load import Traffic, ask, openai_client, send_corrections
from deploy.sandbox import ALIAS, LocalLoop, stage_table, wait_stage_row
from tests.e2e.conftest import E2E_LOOP_TIMEOUT_S, E2E_RATE, E2E_USERS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]  # the first test also starts the stack
pytest.importorskip("vllm")
pytest.importorskip("trl")

# The load must really have been there (the generator shares 2 cores with the stack, so it runs below its
# target on a busy machine): half the asked rate, a check of the harness, not of the gateway's speed.
MIN_RATE = E2E_RATE / 2
# The gateway re-reads the routes every FLYWHEEL_GATEWAY_REFRESH_S (1 s): a request may be routed by a table up to
# that old, plus scheduling delay on a loaded machine.
ROUTE_LAG_S = 3.0


def deployments(events, version: str | None = None) -> list:
    return [e for e in events.snapshot() if is_deployment(e, version)]


def is_deployment(event, version: str | None = None, action: str | None = None) -> bool:
    from schemas.events import Deployment

    return (
        isinstance(event, Deployment)
        and (version is None or event.version == version)
        and (action is None or event.action == action)
    )


@pytest.fixture(scope="module")
def state() -> dict:
    """What the tests of this module pass on: versions, times."""
    return {}


@pytest.fixture(scope="module")
def traffic(loop: LocalLoop, routes, loop_events):
    """The steady load, from the first test to the last (the last one stops it and checks it)."""
    load = Traffic(loop, rate=E2E_RATE, users=E2E_USERS, max_tokens=4).start()
    yield load
    if not getattr(load, "stopped_at", None):
        load.stop()


def test_good_loop_promotes_the_adapter(loop: LocalLoop, loop_events, routes, traffic, state):
    from schemas.events import RetrainJob

    since = time.time()
    answers = send_corrections(loop, loop_events, since=since, timeout=E2E_LOOP_TIMEOUT_S)
    job = loop_events.wait(lambda e: isinstance(e, RetrainJob) and e.status == "requested", 30, "job requested")
    state["job_id"] = job.job_id

    # The job names exactly pairs built from our corrections.
    store = loop.store()
    deadline = time.monotonic() + 60
    while True:
        rows = store.query(
            "SELECT pair_id, source, message_id, chosen FROM flywheel.dpo_pairs FINAL WHERE pair_id IN %(ids)s",
            parameters={"ids": job.pair_ids},
        ).result_rows
        if len(rows) == len(job.pair_ids) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(rows) == len(job.pair_ids) >= 8, (rows, job.pair_ids)
    ours = {a.message_id for a in answers}
    assert all(source == "correction" and message_id in ours for _, source, message_id, _ in rows), rows

    started = loop_events.wait(
        lambda e: isinstance(e, RetrainJob) and e.job_id == job.job_id and e.status == "started",
        E2E_LOOP_TIMEOUT_S,
        "job started",
    )
    done = loop_events.wait(
        lambda e: isinstance(e, RetrainJob) and e.job_id == job.job_id and e.status in ("succeeded", "failed"),
        E2E_LOOP_TIMEOUT_S,
        "job ended",
    )
    assert done.status == "succeeded" and done.verdict == "accepted", done
    assert started.parent_version is None  # the first adapter: a new LoRA on the base model
    version = done.adapter_version
    state["version"] = version

    def fail(e) -> bool:
        return is_deployment(e, version, "rolled_back")

    ready = loop_events.wait(lambda e: is_deployment(e, version, "adapter_ready"), 60, "adapter_ready")
    assert ready.job_id == job.job_id and ready.adapter_path and Path(ready.adapter_path).is_dir()
    loop_events.wait(
        lambda e: is_deployment(e, version, "canary_started"), E2E_LOOP_TIMEOUT_S, "canary_started", fail=fail
    )
    promoted = loop_events.wait(
        lambda e: is_deployment(e, version, "promoted"), E2E_LOOP_TIMEOUT_S, f"{version} promoted", fail=fail
    )
    state["promoted_at"] = promoted.occurred_at.timestamp()
    steps = [e.weight for e in deployments(loop_events, version) if e.action in ("canary_started", "step", "promoted")]
    assert steps == [5, 20, 50, 100], steps
    # The routing table is sampled every 0.2 s by a thread that a loaded machine can delay: wait for
    # the sample that follows the promotion rather than racing it.
    deadline = time.monotonic() + 15
    while routes.max_weight(version) != 100 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert routes.max_weight(version) == 100

    # /v1/models lists the promoted version for the alias (the gateway re-reads the routes every second).
    client = openai_client(loop)
    deadline = time.monotonic() + 30
    while True:
        listed = client.models.list().model_dump()["data"]
        alias_entry = next(m for m in listed if m["id"] == ALIAS)
        if alias_entry.get("versions") == [{"version": version, "weight": 100}] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert alias_entry["versions"] == [{"version": version, "weight": 100}], listed
    assert any(m["id"] == version and m.get("parent") == ALIAS for m in listed), listed

    # New answers, and their response events, name the promoted version.
    fresh = [ask(client, f"after-promotion-{i}", "Where is my order #77777?") for i in range(5)]
    assert {a.version for a in fresh} == {version}
    ids = {a.message_id for a in fresh}
    deadline = time.monotonic() + 60
    while len({e.message_id for e in _responses(loop_events) if e.message_id in ids}) < len(ids):
        assert time.monotonic() < deadline, "no response events for the new answers"
        time.sleep(1)
    assert {e.model_version for e in _responses(loop_events) if e.message_id in ids} == {version}

    # The stage times, from one SQL view (as `flywheel sql` shows them).
    row = wait_stage_row(store, job.job_id, timeout=60)
    state["stages"] = row
    from rich.console import Console

    Console().print(stage_table(row))
    assert row["adapter_version"] == version and row["verdict"] == "accepted"
    ordered = [
        row[c]
        for c in (
            "threshold_pair_at",
            "requested_at",
            "started_at",
            "succeeded_at",
            "adapter_ready_at",
            "canary_started_at",
            "promoted_at",
        )
    ]
    assert ordered == sorted(ordered), row
    out = subprocess.run(
        [str(Path(sys.executable).parent / "flywheel"), "sql", "SELECT job_id, total_s FROM flywheel.v_loop_stages"],
        env=loop.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and job.job_id[:8] in out.stdout, out.stdout + out.stderr


def _responses(events) -> list:
    from schemas.events import ChatResponse

    return [e for e in events.snapshot() if isinstance(e, ChatResponse)]


def test_bad_adapter_is_rolled_back_by_the_canary(
    loop: LocalLoop, loop_events, routes, traffic, state, tmp_path, quick_config
):
    from producers.sdk import ChatEventProducer
    from producers.settings import ProducerSettings
    from retrain.dataset import query_pairs
    from schemas.events import Deployment, RetrainJob

    if "version" not in state:
        pytest.skip("the good loop did not promote an adapter")
    good = state["version"]
    job = next(e for e in loop_events.snapshot() if isinstance(e, RetrainJob) and e.job_id == state["job_id"])
    pairs = [p for p in query_pairs(loop.store(), job.pair_ids).values() if p is not None]
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text(
        "".join(
            json.dumps(
                {
                    "pair_id": f"swapped-{p.pair_id}",
                    "prompt": list(p.prompt),
                    "chosen": p.rejected,
                    "rejected": p.chosen,
                }
            )
            + "\n"
            for p in pairs
        )
    )
    # The same code as a retrain job (continuing from the promoted adapter), in its own process.
    trained = subprocess.run(
        # The gate's verdict is not obeyed here, so a short supervised stage is enough: the users' thumbs judge it.
        [str(Path(sys.executable).parent / "flywheel"), "train", "dpo", "--pairs", str(swapped)]
        + ["--config", str(quick_config)],
        env=loop.child_env(),
        capture_output=True,
        text=True,
        timeout=E2E_LOOP_TIMEOUT_S,
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    result = json.loads(trained.stdout.strip().splitlines()[-1])
    bad, path = result["version"], result["path"]
    print(f"bad adapter {bad}: gate verdict {result['verdict']} {result['reasons']} (deployed regardless)")

    # Users routed to the bad version thumb it down; everyone else stays happy.
    traffic.verdict = lambda version, user: "thumbs_down" if version == bad else "thumbs_up"
    producer = ChatEventProducer(ProducerSettings(kafka_bootstrap=loop.settings.kafka_bootstrap))
    try:
        producer.send(
            Deployment(
                alias=ALIAS,
                action="adapter_ready",
                version=bad,
                previous_version=good,
                adapter_path=path,
                job_id=result["job_id"],
                producer="e2e-test",
                reason="e2e: trained on swapped pairs, announced as if it had passed the gate",
            )
        )
        assert producer.flush(30).pending == 0
    finally:
        producer.close(strict=False)

    loop_events.wait(lambda e: is_deployment(e, bad, "canary_started"), E2E_LOOP_TIMEOUT_S, f"{bad} canary_started")
    rolled = loop_events.wait(
        lambda e: is_deployment(e, bad, "rolled_back"),
        E2E_LOOP_TIMEOUT_S,
        f"{bad} rolled back",
        fail=lambda e: is_deployment(e, bad, "promoted"),
    )
    state["rolled_back_at"] = rolled.occurred_at.timestamp()
    print(f"rolled back: {rolled.reason}")
    assert "thumbs-down" in rolled.reason, rolled.reason
    assert rolled.previous_version == good
    weights = [e.weight for e in deployments(loop_events, bad) if e.weight is not None and e.action != "rolled_back"]
    assert weights and max(weights) < 100, weights
    assert routes.max_weight(bad) < 100
    redis = loop.redis()
    assert {v: int(w) for v, w in redis.hgetall(f"flywheel:routes:{ALIAS}").items() if int(w)} == {good: 100}

    # Unloaded once drained: gone from the worker and from the adapters the workers load.
    deadline = time.monotonic() + 180
    while True:
        listed = httpx.get(f"{loop.worker_url}/v1/models", headers=loop.worker_headers(), timeout=30)
        served = {m["id"] for m in listed.raise_for_status().json()["data"]}
        if bad not in served and not redis.hexists("flywheel:adapters", bad):
            break
        assert time.monotonic() < deadline, f"{bad} still loaded: {served}"
        time.sleep(1)
    assert good in served
    state["unloaded_at"] = time.time()
    time.sleep(3)  # some traffic after the unload


def test_constant_load_never_fails_and_names_one_version(loop: LocalLoop, loop_events, routes, traffic, state):
    results = traffic.stop()
    failed = [r for r in results if r.status != 200]
    window = (traffic.started_at, traffic.stopped_at)
    rate = traffic.achieved_rate()
    print(
        f"traffic: {len(results)} requests in {window[1] - window[0]:.0f} s ({rate:.1f}/s), {len(failed)} failed, "
        f"{sum(1 for r in results if r.rated)} rated, feedback errors {len(traffic.feedback_errors)}"
    )
    assert not failed, [(r.status, r.error) for r in failed[:10]]
    assert rate >= MIN_RATE, rate
    assert not traffic.feedback_errors, traffic.feedback_errors[:10]

    # The load covered adapter load, every canary step, promotion, rollback and unload.
    covered = [e for e in deployments(loop_events) if window[0] <= e.occurred_at.timestamp() <= window[1]]
    actions = {e.action for e in covered}
    assert {"adapter_ready", "canary_started", "step", "promoted", "rolled_back"} <= actions, actions
    if "unloaded_at" in state:
        assert state["unloaded_at"] < window[1]

    # Every answer has exactly one response event version, the answer's, routed while it ran.
    wanted = {r.message_id: r for r in results}
    deadline = time.monotonic() + 120
    while True:
        by_message: dict[str, set[str]] = {}
        statuses: dict[str, set[str]] = {}
        for e in _responses(loop_events):
            if e.message_id in wanted:
                by_message.setdefault(e.message_id, set()).add(e.model_version)
                statuses.setdefault(e.message_id, set()).add(e.status)
        if len(by_message) == len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(1)
    missing = set(wanted) - set(by_message)
    assert not missing, f"{len(missing)} answers without a response event, e.g. {sorted(missing)[:5]}"
    known = {loop.settings.served_model_name} | {e.version for e in deployments(loop_events)}
    wrong = []
    for message_id, versions in by_message.items():
        r = wanted[message_id]
        routed = routes.routed_between(r.started - ROUTE_LAG_S, r.ended)
        (version,) = versions if len(versions) == 1 else (None,)
        if (
            version is None
            or version != r.version
            or version not in known
            or version not in routed
            or statuses[message_id] != {"ok"}
        ):
            wrong.append((message_id, versions, r.version, sorted(routed), statuses[message_id]))
    assert not wrong, f"{len(wrong)} answers with a wrong version: {wrong[:10]}"
    served = {v for versions in by_message.values() for v in versions}
    print(f"versions served under load: {sorted(served)}")
    assert {loop.settings.served_model_name, state.get("version")} <= served


def test_every_metric_of_the_alerts_and_dashboards_is_exported(loop: LocalLoop):
    """Scrape every service of the running stack: each Flywheel and vLLM metric a rule or panel uses exists."""
    from tests import manifests

    urls = {**loop.metrics_urls(), "vllm": f"{loop.worker_url}/metrics"}
    exported: dict[str, set[str]] = {}
    for name, url in urls.items():
        answer = httpx.get(url, headers={"Authorization": f"Bearer {loop.api_key}"}, timeout=30)
        assert answer.status_code == 200, (name, answer.status_code)
        exported[name] = manifests.exported_names(answer.text)
    everything = set().union(*exported.values())
    used = set().union(*(manifests.metric_names(e) for _, e in manifests.expressions()))
    ours = {n for n in used if n.startswith(("flywheel_", "vllm:"))}
    assert ours and not ours - everything, sorted(ours - everything)
    # each service exports its own
    for service in ("controller", "retrain", "streams"):
        assert any(n.startswith(f"flywheel_{service}_") for n in exported[service]), service


def test_down_and_up_under_traffic_keep_every_accepted_answer_once(loop: LocalLoop):
    """`flywheel down` drains the embedded broker's log before it stops: every answer the gateway gave (200) is
    in ClickHouse exactly once after `flywheel up`, under traffic all along (refused requests are not accepted)."""
    load = Traffic(loop, rate=8, users=40, max_tokens=4, verdict=lambda version, user: None).start()
    time.sleep(8)
    flywheel = [str(Path(sys.executable).with_name("flywheel"))]
    down = subprocess.run([*flywheel, "down"], env=loop.child_env(), capture_output=True, text=True, timeout=300)
    print(down.stdout)
    assert down.returncode == 0 and "not stored" not in down.stdout, down.stdout + down.stderr
    up = subprocess.run([*flywheel, "up"], env=loop.child_env(), capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    time.sleep(8)
    results = load.stop()
    accepted = [r.message_id for r in results if r.status == 200]
    print(f"{len(results)} requests, {len(accepted)} accepted, {len(results) - len(accepted)} refused or failed")
    assert len(accepted) >= 40 and len(accepted) < len(results)

    assert all(re.fullmatch(r"[\w-]+", m) for m in accepted), accepted[:5]
    ids = ", ".join(f"'{m}'" for m in accepted)
    store = loop.store()
    deadline = time.monotonic() + 180
    while True:
        rows = store.query(
            f"SELECT message_id, count() FROM flywheel.chat_responses WHERE message_id IN ({ids}) GROUP BY message_id"
        ).result_rows
        counts = dict(rows)
        if len(counts) == len(accepted) or time.monotonic() > deadline:
            break
        time.sleep(2)
    missing = [m for m in accepted if m not in counts]
    assert not missing, f"{len(missing)} of {len(accepted)} accepted answers not stored, e.g. {missing[:5]}"
    assert all(n == 1 for n in counts.values()), {m: n for m, n in counts.items() if n != 1}
