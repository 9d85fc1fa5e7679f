"""The gateway's cost, measured against the upstream called directly and the seed's naive gateway.

Everything runs as separate processes started here: a broker + Redis (+ store) stack under a temporary data
dir on free ports (`deploy.stack.up`, infra only), bench/upstream_stub.py, our gateway (`python -m
inference.gateway.app`, every feature on: API key auth, a rate limit far above the load, session history in Redis,
events to the broker) and bench/naive_gateway.py. The load comes from another process.

(a) throughput: `wrk` (Debian package; a Python load tool saturates first) with a Lua POST-body script,
    `-t1 -c64 -d10s` by default, and at `-c1` for the added latency; every target once per round, the
    order rotated between rounds, medians over the rounds. Goals: ours >= 2x the naive gateway's
    requests/s (aim 10x), added p50 at c1 over the upstream direct < 3 ms.
(b) service targets (--vllm MODEL_DIR, or --b-stub to try the code path against the stub): an open-loop
    constant-rate generator (asyncio + aiohttp; latency counted from each request's scheduled time, so a
    stalled server cannot hide its queue), rates stepped up until p99 >= 2 s, errors >= 1% or timeouts
    >= 0.5%, then refined; for the worker directly and through our gateway, answers of 16 tokens.
    Goal: the gateway sustains >= 90% of the direct rate.

A peer runs in the same rounds with --litellm EXE: the LiteLLM proxy (`litellm[proxy]`, one worker per core) on the
same stub upstream, with a master key and no database (its lightest configuration). Install it in an environment of
its own (its pins clash with ours): `python3 -m venv /tmp/litellm && /tmp/litellm/bin/pip install 'litellm[proxy]'`.

Extra variants of our gateway run beside it in the same rounds (e.g. a snapshot of the code before a
change, or other settings): --variant LABEL=DIR[:KEY=VAL,KEY=VAL] (DIR holds the packages; "." = here).

Examples:

    python -m bench.gateway                                   # (a), 3 rounds
    python -m bench.gateway --litellm /tmp/litellm/bin/litellm   # (a) with the LiteLLM proxy as a row
    python -m bench.gateway --rounds 5 --duration 10 --variant w2=.:FLYWHEEL_GATEWAY_WORKERS=2
    python -m bench.gateway --skip-a --b-stub --b-duration 3 --b-start 20 --b-step 20 --b-max 60
    python -m bench.gateway --skip-a --vllm .flywheel/models/tiny  # (b) with a vLLM CPU worker
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from bench.gateway_procs import (
    ROOT,
    Proc,
    Target,
    console,
    cpu_seconds,
    spawn,
    start_gateway,
    start_litellm,
    wait_http,
)
from bench.gateway_rate import part_b
from deploy import stack as local_stack
from deploy.ports import free_ports
from schemas.settings import CommonSettings

OPENAI_BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Where is my order 12345?"}], "max_tokens": 16}
CHAT_MESSAGE = "Where is my order 12345?"
SESSIONS = 256  # /chat load cycles over this many session ids, so history is read and grows to 10 turns


# -- (a) wrk ---------------------------------------------------------------------------------------

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def lua_script(target: Target) -> str:
    headers = {"Content-Type": "application/json", **target.headers}
    lines = ['wrk.method = "POST"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    if target.session_field:
        # one body per session id, built once; request() cycles through them
        prefix = json.dumps({**target.body, "session_id": "SID"}).split('"SID"')
        lines.append("local bodies = {}")
        lines.append(
            f"for i = 1, {SESSIONS} do bodies[i] = {json.dumps(prefix[0])} .. "
            f"'\"' .. 'bench-' .. '{uuid.uuid4().hex[:8]}-' .. i .. '\"' .. {json.dumps(prefix[1])} end"
        )
        lines.append("local n = 0")
        lines.append(
            f"request = function() n = n + 1; return wrk.format(nil, nil, nil, bodies[(n % {SESSIONS}) + 1]) end"
        )
    else:
        lines.append(f"wrk.body = {json.dumps(json.dumps(target.body))}")
    return "\n".join(lines) + "\n" + WRK_DONE


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_ms: float  # the server process's CPU per request


def run_wrk(target: Target, path: str, connections: int, duration: float, threads: int, tmp: Path) -> WrkResult:
    script = tmp / f"wrk-{abs(hash((target.label, path)))}.lua"
    script.write_text(lua_script(target))
    cmd = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        target.url + path,
    ]
    cpu0 = cpu_seconds(target.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    cpu_s = cpu_seconds(target.pid) - cpu0
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    d = json.loads(line[len("WRKJSON ") :])
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    return WrkResult(
        d["requests"] / (d["duration_us"] / 1e6),
        d["p50_us"] / 1000,
        d["p99_us"] / 1000,
        errors,
        d["requests"],
        1000 * cpu_s / max(1, d["requests"]),
    )


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit(
            "bench/gateway.py needs wrk (a compiled HTTP load tool): `apt-get install -y wrk` "
            "(Debian/Ubuntu) or build it from https://github.com/wg/wrk, then run again."
        )


def part_a(targets: list[tuple[Target, str]], args, tmp: Path) -> dict:
    """Every target once per round at -c<connections> and at -c1, order rotated; returns the raw samples."""
    samples: dict[str, dict[str, list[WrkResult]]] = {t.label: {"load": [], "c1": []} for t, _ in targets}
    for target, path in targets:  # warm every connection pool, key cache and script cache
        run_wrk(target, path, min(8, args.connections), 1.0, 1, tmp)
    for r in range(args.rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        for target, path in order:
            res = run_wrk(target, path, args.connections, args.duration, args.threads, tmp)
            samples[target.label]["load"].append(res)
            console.log(
                f"round {r + 1} {target.label:>22} c{args.connections}: {res.rps:8.0f} req/s "
                f"p50 {res.p50_ms:7.2f} ms p99 {res.p99_ms:7.2f} ms errors {res.errors} "
                f"cpu {res.cpu_ms:.2f} ms/req"
            )
        for target, path in order:
            res = run_wrk(target, path, 1, args.c1_duration, 1, tmp)
            samples[target.label]["c1"].append(res)
            console.log(
                f"round {r + 1} {target.label:>22} c1:  {res.rps:8.0f} req/s "
                f"p50 {res.p50_ms:7.3f} ms p99 {res.p99_ms:7.3f} ms errors {res.errors}"
            )
    return samples


def med(values) -> float:
    return statistics.median(values)


def print_a(samples: dict, args, naive_label: str, direct_label: str) -> None:
    naive_rps = med(x.rps for x in samples[naive_label]["load"]) or float("nan")
    direct_c1 = med(x.p50_ms for x in samples[direct_label]["c1"])
    table = Table(
        title=f"(a) gateway cost: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
        f"and -c1 -d{args.c1_duration:g}s; medians of {args.rounds} interleaved rounds"
    )
    for col in (
        "server",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "x naive",
        "CPU ms/req",
        "req/s c1",
        "p50 c1 ms",
        "p99 c1 ms",
        "added p50 c1 ms",
    ):
        table.add_column(col, justify="left" if col == "server" else "right")
    for label, s in samples.items():
        load, c1 = s["load"], s["c1"]
        rps = med(x.rps for x in load)
        p50c1 = med(x.p50_ms for x in c1)
        table.add_row(
            label,
            f"{rps:,.0f}",
            f"{med(x.p50_ms for x in load):.1f}",
            f"{med(x.p99_ms for x in load):.1f}",
            str(sum(x.errors for x in load) + sum(x.errors for x in c1)),
            f"{rps / naive_rps:.1f}x",
            f"{med(x.cpu_ms for x in load):.2f}",
            f"{med(x.rps for x in c1):,.0f}",
            f"{p50c1:.2f}",
            f"{med(x.p99_ms for x in c1):.2f}",
            "-" if label == direct_label else f"{p50c1 - direct_c1:+.2f}",
        )
    console.print(table)
    console.print(
        "CPU ms/req: the server process's own CPU time per request at load (with its uvicorn workers; "
        "not the stub's, Redis's or the broker's)"
    )
    console.print(
        "goals: ours >= 2x naive req/s (aim 10x); added p50 at c1 < 3 ms. "
        "Per-round req/s: "
        + "; ".join(f"{k} " + "/".join(f"{x.rps:.0f}" for x in v["load"]) for k, v in samples.items())
    )


# -- main --------------------------------------------------------------------------------------------


def parse_variant(spec: str) -> tuple[str, Path, dict[str, str]]:
    label, _, rest = spec.partition("=")
    directory, _, envs = rest.partition(":")
    env = dict(kv.split("=", 1) for kv in envs.split(",") if kv)
    return label, (ROOT / directory).resolve(), env


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run at --connections")
    p.add_argument("--c1-duration", type=float, default=5.0, help="seconds per wrk run at -c1")
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--no-naive", action="store_true", help="(a) without the naive gateway (variants only)")
    p.add_argument("--litellm", metavar="EXE", help="(a) also load the LiteLLM proxy, this `litellm` executable")
    p.add_argument("--routes", default="chat,openai", help="our routes to load: chat (/chat), openai")
    p.add_argument("--variant", action="append", default=[], help="LABEL=DIR[:KEY=VAL,...] another gateway")
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        type=lambda s: tuple(s.split("=", 1)),
        help="KEY=VAL for our gateway (repeatable)",
    )
    p.add_argument("--vllm", metavar="MODEL_DIR", help="(b) against a vLLM worker serving MODEL_DIR")
    p.add_argument("--b-stub", action="store_true", help="(b) against the stub (checks the code path)")
    p.add_argument("--b-duration", type=float, default=60.0)
    p.add_argument("--b-start", type=float, default=10.0)
    p.add_argument("--b-step", type=float, default=10.0)
    p.add_argument("--b-max", type=float, default=200.0)
    p.add_argument("--b-refine", type=int, default=2, help="bisection steps after the first failing rate")
    p.add_argument("--b-timeout", type=float, default=10.0, help="client timeout per request (a timeout)")
    p.add_argument("--b-tokens", type=int, default=16)
    p.add_argument("--b-pause", type=float, default=2.0, help="seconds of rest between steps")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = p.parse_args(argv)
    if not args.skip_a:
        require_wrk()

    tmp = Path(tempfile.mkdtemp(prefix="flywheel-bench-gw-"))
    logs = tmp / "logs"
    logs.mkdir()
    kafka, redis_port, store = free_ports(3)
    settings = CommonSettings(
        data_dir=tmp / "stack",
        kafka_bootstrap=f"127.0.0.1:{kafka}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        clickhouse_dsn="",
        clickhouse_http_port=store,
    )
    procs: list[Proc] = []
    console.log(f"starting broker + Redis under {tmp}")
    local_stack.up(settings, infra_only=True, timeout=90.0)
    try:
        (stub_port, naive_port) = free_ports(2)
        stub_url = f"http://127.0.0.1:{stub_port}"
        stub = spawn("stub", [sys.executable, "-m", "bench.upstream_stub", "--port", str(stub_port)], logs)
        procs.append(stub)
        wait_http(stub, stub_url + "/health")
        if not args.skip_a:
            chat_body = {"message": CHAT_MESSAGE, "max_tokens": 16}
            direct = Target("upstream direct", stub_url, OPENAI_BODY, pid=stub.popen.pid)
            targets: list[tuple[Target, str]] = [(direct, "/v1/chat/completions")]
            naive_label = "naive /chat"
            if not args.no_naive:
                naive = spawn(
                    "naive",
                    [
                        sys.executable,
                        "-m",
                        "bench.naive_gateway",
                        "--port",
                        str(naive_port),
                        "--upstream",
                        stub_url,
                        "--redis",
                        settings.redis_dsn,
                    ],
                    logs,
                )
                procs.append(naive)
                naive_url = f"http://127.0.0.1:{naive_port}"
                wait_http(naive, naive_url + "/health")
                targets.append(
                    (Target(naive_label, naive_url, chat_body, session_field=True, pid=naive.popen.pid), "/chat")
                )
            if args.litellm:
                proc, url, key = start_litellm(args.litellm, tmp, logs, stub_url)
                procs.append(proc)
                auth = {"Authorization": f"Bearer {key}"}
                targets.append(
                    (Target("litellm proxy", url, OPENAI_BODY, auth, pid=proc.popen.pid), "/v1/chat/completions")
                )
            gateways = [("ours", ROOT, dict(args.ours_env))]
            gateways += [(lab, d, {**dict(args.ours_env), **env}) for lab, d, env in map(parse_variant, args.variant)]
            routes = args.routes.split(",")
            for label, code_dir, env in gateways:
                proc, url, key = start_gateway(label, settings, tmp, logs, stub_url, code_dir, env)
                procs.append(proc)
                auth = {"Authorization": f"Bearer {key}"}
                if "chat" in routes:
                    targets.append(
                        (
                            Target(f"{label} /chat", url, chat_body, auth, session_field=True, pid=proc.popen.pid),
                            "/chat",
                        )
                    )
                if "openai" in routes:
                    targets.append(
                        (
                            Target(
                                f"{label} /v1/chat", url, {**OPENAI_BODY, "model": "support"}, auth, pid=proc.popen.pid
                            ),
                            "/v1/chat/completions",
                        )
                    )
            if args.no_naive:
                naive_label = targets[1][0].label
            samples = part_a(targets, args, tmp)
            print_a(samples, args, naive_label, direct.label)
        if args.vllm or args.b_stub:
            part_b(settings, tmp, logs, procs, args, stub_url)
    finally:
        for proc in reversed(procs):
            proc.stop()
        local_stack.down(settings)
        if args.keep:
            console.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
