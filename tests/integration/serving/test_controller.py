"""The hot-swap controller against real parts: broker and Redis (`stack`), chDB, a vLLM CPU server.

- canary figures: ClickHouseMetrics over an in-process chDB on a temp path (rows via schemas.rows);
- adapters: load / verify / drain / unload on a real vLLM server with random LoRA adapters;
- rollouts: the controller service consumes adapter_ready from `model.deployments`; the figures come
  from the same chDB, fed with synthetic responses and feedback as the canary runs (a bad adapter gets
  many thumbs-down); meanwhile a load generator routes requests the way the gateway does (routing
  table re-read every second, sticky buckets) straight to vLLM and must see zero failures through
  load, canary steps, promotion and unload.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis as redis_sync
from confluent_kafka import Consumer

from inference.adapters import AdapterAdmin, AdapterLoadError
from inference.controller.canary_metrics import ClickHouseMetrics
from inference.controller.cli import describe, live_state
from inference.controller.service import kafka_publisher, serve
from inference.controller.settings import ControllerSettings
from inference.keys import ADAPTERS_KEY, ROUTES_KEY
from inference.routing import Route, choose
from schemas.ddl import migrate
from schemas.events import ChatResponse, Deployment, Feedback
from schemas.rows import columns, to_row
from schemas.settings import bearer
from schemas.topics import MODEL_DEPLOYMENTS
from tests.reading import assign_all

from .worker import SERVED, TOKEN, Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

clickhouse_connect = pytest.importorskip("clickhouse_connect")
REDIS_DB = 6  # a database of its own: the controller scans every worker record of its database


# --- the analytics store ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ch(tmp_path_factory):
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('chdb')}")
    migrate(client)
    yield client
    client.close()  # one chDB path per process: free it for the next module


def insert_traffic(
    ch,
    alias: str,
    version: str,
    n: int,
    down_every: int | None,
    latency_ms: float = 100.0,
    errors: int = 0,
    when: datetime | None = None,
) -> list[ChatResponse]:
    """n responses of `version` (the first `errors` failed), every `down_every`-th thumbed down, the rest up."""
    responses, feedback = [], []
    for i in range(n):
        mid = uuid.uuid4().hex
        kw = {"occurred_at": when} if when else {}
        responses.append(
            ChatResponse(
                session_id=f"s{i}",
                message_id=mid,
                model_alias=alias,
                model_version=version,
                latency_ms=latency_ms + i % 7,
                status="error" if i < errors else "ok",
                **kw,
            )
        )
        verdict = "thumbs_down" if down_every and i % down_every == 0 else "thumbs_up"
        feedback.append(Feedback(session_id=f"s{i}", message_id=mid, feedback=verdict, **kw))
    ch.insert("flywheel.chat_responses", [to_row(e) for e in responses], column_names=columns(ChatResponse))
    ch.insert("flywheel.feedback", [to_row(e) for e in feedback], column_names=columns(Feedback))
    return responses


def test_clickhouse_metrics(ch):
    alias = f"m{uuid.uuid4().hex[:6]}"
    old = datetime.now(UTC) - timedelta(hours=1)
    insert_traffic(ch, alias, "v1", 50, down_every=None, when=old)  # before the window: ignored
    since = datetime.now(UTC) - timedelta(seconds=1)
    sent = insert_traffic(ch, alias, "v1", 40, down_every=4, errors=2)
    insert_traffic(ch, alias, "v2", 30, down_every=2, latency_ms=300)
    insert_traffic(ch, "other", "v2", 30, down_every=1)  # another alias: ignored
    # A duplicate delivery (same event_id) counts once (FINAL); a changed verdict counts as the latest.
    ch.insert("flywheel.chat_responses", [to_row(sent[5])], column_names=columns(ChatResponse))
    later = Feedback(
        session_id="s1",
        message_id=sent[1].message_id,
        feedback="thumbs_down",
        occurred_at=datetime.now(UTC) + timedelta(seconds=1),
    )
    ch.insert("flywheel.feedback", [to_row(later)], column_names=columns(Feedback))

    figures = ClickHouseMetrics(ch)(alias, ["v2", "v1", "v3"], since)
    v1, v2, v3 = figures["v1"], figures["v2"], figures["v3"]
    assert (v1.responses, v1.errors, v1.rated, v1.thumbs_down) == (40, 2, 40, 11)
    assert (v2.responses, v2.errors, v2.rated, v2.thumbs_down) == (30, 0, 30, 15)
    assert 300 <= v2.latency_p95_ms <= 307 and 100 <= v1.latency_p95_ms <= 107
    ok_v1 = [r.latency_ms for r in sent if r.status == "ok"]
    assert v1.latency_mean_ms == pytest.approx(statistics.fmean(ok_v1))
    assert v1.latency_sd_ms == pytest.approx(statistics.stdev(ok_v1))
    assert v3.responses == 0 and v3.latency_p95_ms is None and v3.latency_mean_ms is None


# --- a real vLLM server -----------------------------------------------------------------------------

vllm_only = pytest.mark.vllm


@pytest.fixture(scope="module")
def model_dir(tiny_model: Path) -> Path:
    pytest.importorskip("vllm")
    return tiny_model


@pytest.fixture(scope="module")
def make_adapter(model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from retrain.registry import Registry

    root = tmp_path_factory.mktemp("adapters")
    registry = Registry(root / "registry")  # the controller loads registered versions only (their manifest checked)

    def make(name: str) -> str:
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        cfg = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
        )
        out = root / name
        get_peft_model(base, cfg).save_pretrained(out)
        return str(registry.register("test", out, {"kind": "test", "name": name}).path.resolve())

    return make


@pytest.fixture(scope="module")
def vllm_url(worker: Worker) -> str:
    """The folder's vLLM worker (conftest.py): this module loads adapters on it and unloads them after."""
    yield worker.url
    for name in set(models_of(worker.url)) - {SERVED}:
        r = httpx.post(f"{worker.url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=bearer(TOKEN))
        assert r.status_code == 200, r.text
    assert models_of(worker.url) == [SERVED]


@pytest.fixture
def r(redis_url, vllm_url):
    url = redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis_sync.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    client.set(
        "flywheel:workers:0", json.dumps({"url": vllm_url, "ready": True, "adapters": [], "started_at": time.time()})
    )
    client.url = url
    yield client
    client.flushdb()
    client.close()


def models_of(url: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{url}/v1/models", headers=bearer(TOKEN)).json()["data"]]


@vllm_only
def test_adapter_load_verify_unload(vllm_url, make_adapter, tmp_path):
    path = make_adapter("admin")

    async def scenario():
        admin = AdapterAdmin(60, token=TOKEN)
        try:
            await admin.load("admin@v1", path, [vllm_url])
            assert "admin@v1" in models_of(vllm_url)
            await admin.load("admin@v1", path, [vllm_url])  # idempotent
            assert await admin.wait_drained("admin@v1", [vllm_url], 10)
            await admin.unload("admin@v1", [vllm_url])
            assert "admin@v1" not in models_of(vllm_url)
            await admin.unload("admin@v1", [vllm_url])  # idempotent
            bad = tmp_path / "bad"
            bad.mkdir()
            (bad / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
            (bad / "adapter_model.safetensors").write_bytes(b"not weights")
            with pytest.raises(AdapterLoadError) as err:  # never registered: refused before any worker sees it
                await admin.load("admin@bad", str(bad), [vllm_url])
            assert err.value.worker == "-" and "not a registered version" in err.value.reason
            lax = AdapterAdmin(60, registered=False, token=TOKEN)
            try:
                with pytest.raises(AdapterLoadError) as err:  # let through: vLLM itself refuses the weights
                    await lax.load("admin@bad", str(bad), [vllm_url])
                assert err.value.worker == vllm_url and err.value.reason
            finally:
                await lax.aclose()
            assert "admin@bad" not in models_of(vllm_url)
        finally:
            await admin.aclose()

    asyncio.run(scenario())


# --- full rollouts through the controller service -----------------------------------------------------


class FedMetrics:
    """ClickHouseMetrics on the test chDB, which first inserts the traffic a real canary would have seen."""

    def __init__(self, ch, bad: set[str]):
        self.inner = ClickHouseMetrics(ch)
        self.ch = ch
        self.bad = bad

    def __call__(self, alias, versions, since):
        for version in versions:
            insert_traffic(self.ch, alias, version, 15, down_every=2 if version in self.bad else 10)
        return self.inner(alias, versions, since)


class Load:
    """Requests routed like the gateway does (routes re-read every second), sent straight to vLLM."""

    def __init__(self, redis_url: str, alias: str, worker: str, base: str = SERVED):
        self.redis_url, self.alias, self.worker, self.base = redis_url, alias, worker, base
        self.routes = [Route(base, 100)]
        self.ok: dict[str, int] = {}
        self.failures: list[str] = []
        self.stop = asyncio.Event()

    async def refresh(self):
        from redis.asyncio import Redis

        r = Redis.from_url(self.redis_url, decode_responses=True)
        while not self.stop.is_set():
            raw = await r.hgetall(ROUTES_KEY.format(alias=self.alias))
            self.routes = [Route(v, int(w)) for v, w in raw.items() if int(w) > 0] or [Route(self.base, 100)]
            await asyncio.sleep(1.0)
        await r.aclose()

    async def client(self, http: httpx.AsyncClient, users):
        while not self.stop.is_set():
            version = choose(self.routes, next(users))
            body = {
                "model": version,
                "messages": [{"role": "user", "content": "Where is my order?"}],
                "max_tokens": 2,
                "temperature": 0,
            }
            try:
                resp = await http.post(f"{self.worker}/v1/chat/completions", json=body)
                if resp.status_code == 200 and resp.json()["model"] == version:
                    self.ok[version] = self.ok.get(version, 0) + 1
                else:
                    self.failures.append(f"{version}: HTTP {resp.status_code} {resp.text[:200]}")
            except httpx.HTTPError as exc:
                self.failures.append(f"{version}: {exc!r}")

    async def run(self, concurrency: int = 4):
        users = (f"user-{i}" for i in itertools.count())
        async with httpx.AsyncClient(timeout=60, headers=bearer(TOKEN)) as http:
            await asyncio.gather(self.refresh(), *(self.client(http, users) for _ in range(concurrency)))


def controller_settings(stack, redis_url: str) -> ControllerSettings:
    return ControllerSettings(
        data_dir=stack.data_dir,
        kafka_bootstrap=stack.kafka_bootstrap,
        redis_url=redis_url,
        worker_api_key=TOKEN,
        canary_plan=[5, 20, 50, 100],
        canary_step_s=1.5,
        canary_poll_s=0.5,
        canary_min_step_samples=10,
        # FedMetrics feeds traffic only when asked: the measured rate says nothing, start at the plan's 5%.
        canary_min_canary_rate=0,
        route_propagation_s=1.5,
        drain_timeout_s=20,
        served_model_name=SERVED,
    )


def deployments(consumer: Consumer, alias: str, until, timeout: float = 240) -> list[Deployment]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        event = Deployment.model_validate_json(msg.value())
        if event.alias == alias and event.action != "adapter_ready":  # the controller's own events only
            seen.append(event)
            if until(seen):
                return seen
    raise AssertionError(f"timed out; deployment events so far: {[(e.action, e.version) for e in seen]}")


async def run_with_controller(settings, metrics, load: Load, body):
    """Run the controller service and the load around `body` (a blocking function run in a thread)."""
    stop = asyncio.Event()
    service = asyncio.create_task(serve(settings, metrics=metrics, stop=stop))
    traffic = asyncio.create_task(load.run())
    try:
        return await asyncio.to_thread(body)
    finally:
        load.stop.set()
        stop.set()
        await asyncio.gather(service, traffic)


@vllm_only
def test_bad_adapter_rolled_back_good_ones_promoted(stack, r, ch, vllm_url, make_adapter, consumer_config):
    alias = f"support{uuid.uuid4().hex[:4]}"
    bad, v1, v2 = f"{alias}@bad", f"{alias}@v1", f"{alias}@v2"
    paths = {v: make_adapter(v.replace("@", "-")) for v in (bad, v1, v2)}
    settings = controller_settings(stack, r.url)
    producer, publish = kafka_publisher(settings)
    consumer = Consumer(consumer_config)
    assign_all(consumer, [MODEL_DEPLOYMENTS.name])
    load = Load(r.url, alias, vllm_url)
    weights_seen: list[dict] = []

    def ready(version, previous):
        publish(
            Deployment(
                alias=alias,
                action="adapter_ready",
                version=version,
                previous_version=previous,
                adapter_path=paths[version],
                job_id=f"job-{version}",
            )
        )

    def body():
        # 1. The bad adapter: thumbed down by the simulated users, rolled back before 100%.
        ready(bad, None)
        events = deployments(consumer, alias, lambda s: s[-1].action in ("promoted", "rolled_back"))
        weights_seen.append(r.hgetall(ROUTES_KEY.format(alias=alias)))
        # 2. Two good ones in a row: v1 replaces the base model, v2 replaces v1 (v1 unloaded once drained).
        ready(v1, None)
        events += deployments(consumer, alias, lambda s: s[-1].action in ("promoted", "rolled_back"))
        ready(v2, v1)
        events += deployments(consumer, alias, lambda s: s[-1].action in ("promoted", "rolled_back"))
        deadline = time.monotonic() + 30  # the unload follows the promoted event
        while v1 in models_of(vllm_url) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.5)  # let the load run on after the unload
        return events

    # What `flywheel status` reads while a step holds: the rollout record's `waiting`, sampled every 0.1 s.
    waiting: list[dict] = []
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            state = live_state(r.url, alias)
            if state.get("rollout", {}).get("waiting"):
                waiting.append(state)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        events = asyncio.run(run_with_controller(settings, FedMetrics(ch, {bad}), load, body))
    finally:
        sampling.set()
        sampler.join()
        producer.close(strict=False)
        consumer.close()

    by_version = {
        v: [(e.action, e.weight) for e in events if e.version == v and e.action != "hold"] for v in (bad, v1, v2)
    }
    # A good canary holds at 5% until the cumulative evidence rules out harm; the hold is announced with counts.
    holds = [e for e in events if e.version == v1 and e.action == "hold"]
    assert holds and all(e.reason.startswith("waiting") and "rated" in e.reason for e in holds), holds
    held = [w["rollout"] for w in waiting if w["rollout"]["canary"] == v1]
    assert held and all(h["waiting"].startswith("waiting") and h["weight"] < 100 for h in held), waiting[:3]
    assert any(line.startswith("  holding: waiting") for line in describe(waiting[-1]))
    # The bad canary: started at 5%, rolled back with the thumbs-down test as the reason, never at 100%.
    assert by_version[bad][0] == ("canary_started", 5)
    assert by_version[bad][-1] == ("rolled_back", 0)
    assert all(w < 100 for a, w in by_version[bad] if a != "rolled_back")
    rolled = next(e for e in events if e.version == bad and e.action == "rolled_back")
    assert "thumbs-down" in rolled.reason and rolled.previous_version == SERVED
    assert weights_seen[0] == {SERVED: "100"}
    # The good ones walked the whole plan.
    for v in (v1, v2):
        assert by_version[v] == [("canary_started", 5), ("step", 20), ("step", 50), ("promoted", 100)], by_version
    promoted = next(e for e in events if e.version == v2 and e.action == "promoted")
    assert promoted.previous_version == v1 and promoted.job_id == f"job-{v2}" and promoted.adapter_path == paths[v2]
    # Final state: v2 takes everything, is the only registered adapter, and the only one loaded.
    assert r.hgetall(ROUTES_KEY.format(alias=alias)) == {v2: "100"}
    assert r.hgetall(ADAPTERS_KEY) == {v2: paths[v2]}
    assert set(models_of(vllm_url)) == {SERVED, v2}
    # Zero failed requests under load through load, canary steps, promotion and unload.
    assert not load.failures, load.failures[:5]
    assert load.ok.get(v1, 0) > 0 and load.ok.get(v2, 0) > 0 and load.ok.get(bad, 0) > 0, load.ok
    assert sum(load.ok.values()) >= 50, load.ok


@vllm_only
def test_restart_mid_canary_resumes_and_operator_commands(stack, r, ch, vllm_url, make_adapter, consumer_config):
    from click.testing import CliRunner

    from inference.controller.cli import deploy_group
    from inference.keys import ROLLOUT_KEY

    alias = f"resume{uuid.uuid4().hex[:4]}"
    v1 = f"{alias}@v1"
    path = make_adapter(v1.replace("@", "-"))
    settings = controller_settings(stack, r.url).model_copy(update={"canary_step_s": 3.0})
    producer, publish = kafka_publisher(settings)
    consumer = Consumer(consumer_config)
    assign_all(consumer, [MODEL_DEPLOYMENTS.name])
    done = lambda s: s[-1].action in ("promoted", "rolled_back")  # noqa: E731

    async def first_life():
        stop = asyncio.Event()
        service = asyncio.create_task(serve(settings, metrics=FedMetrics(ch, set()), stop=stop))
        publish(Deployment(alias=alias, action="adapter_ready", version=v1, adapter_path=path, job_id="j1"))
        events = await asyncio.to_thread(deployments, consumer, alias, lambda s: s[-1].action == "canary_started")
        stop.set()  # the service stops mid-step: its rollout record stays behind
        await service
        return events

    async def second_life():
        stop = asyncio.Event()
        service = asyncio.create_task(serve(settings, metrics=FedMetrics(ch, set()), stop=stop))
        events = await asyncio.to_thread(deployments, consumer, alias, done)
        stop.set()
        await service
        return events

    try:
        before = asyncio.run(first_life())
        assert r.hget(ROLLOUT_KEY.format(alias=alias), "phase") == "canary"
        assert r.hgetall(ROUTES_KEY.format(alias=alias)) == {SERVED: "95", v1: "5"}
        after = asyncio.run(second_life())
    finally:
        producer.close(strict=False)

    assert [(e.action, e.weight) for e in before] == [("canary_started", 5)]
    assert [(e.action, e.weight) for e in after if e.action != "hold"] == [
        ("step", 20),
        ("step", 50),
        ("promoted", 100),
    ]
    assert not r.exists(ROLLOUT_KEY.format(alias=alias))
    assert r.hgetall(ROUTES_KEY.format(alias=alias)) == {v1: "100"}

    # Operators: roll back to the base model (v1 unloaded), then promote v1 again (reloaded from the releases).
    env = {
        "FLYWHEEL_REDIS_URL": r.url,
        "FLYWHEEL_WORKER_API_KEY": TOKEN,
        "FLYWHEEL_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "FLYWHEEL_ROUTE_PROPAGATION_S": "0.5",
        "FLYWHEEL_SERVED_MODEL_NAME": SERVED,
    }
    runner = CliRunner()
    result = runner.invoke(deploy_group, ["rollback", "--alias", alias], env=env)
    assert result.exit_code == 0, result.output
    assert r.hgetall(ROUTES_KEY.format(alias=alias)) == {SERVED: "100"}
    assert v1 not in models_of(vllm_url) and not r.hexists(ADAPTERS_KEY, v1)
    result = runner.invoke(deploy_group, ["promote", v1, "--alias", alias], env=env)
    assert result.exit_code == 0, result.output
    assert r.hgetall(ROUTES_KEY.format(alias=alias)) == {v1: "100"}
    assert v1 in models_of(vllm_url)
    ops = deployments(consumer, alias, lambda s: len(s) >= 2, timeout=30)
    consumer.close()
    assert [(e.action, e.version) for e in ops] == [("rolled_back", v1), ("promoted", v1)]
    assert all("by hand" in e.reason for e in ops)
