"""Part (b) of the gateway benchmark: an open-loop constant-rate generator (latency counted from each
request's scheduled time), the search for the highest rate each path sustains within the service targets, and
the table comparing the worker called directly with the same worker through our gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from bench.gateway_procs import Proc, console, spawn, start_gateway, wait_http
from deploy.ports import free_ports
from schemas.settings import CommonSettings

# -- (b) open-loop constant rate ------------------------------------------------------------------


@dataclass
class RateResult:
    rate: float
    sent: int
    ok: int
    errors: int
    timeouts: int
    achieved: float
    p50_s: float
    p99_s: float

    @property
    def error_frac(self) -> float:
        return self.errors / max(1, self.sent)

    @property
    def timeout_frac(self) -> float:
        return self.timeouts / max(1, self.sent)

    def passes(
        self, p99_s: float = 2.0, max_errors: float = 0.01, max_timeouts: float = 0.005, min_achieved: float = 0.95
    ) -> bool:
        """The seed's targets, and the rate really sustained (answers kept pace with the offered rate)."""
        return (
            self.p99_s < p99_s
            and self.error_frac < max_errors
            and self.timeout_frac < max_timeouts
            and self.achieved >= min_achieved * self.rate
        )


async def open_loop(
    url: str, body: dict, headers: dict[str, str], rate: float, duration: float, timeout_s: float
) -> RateResult:
    """Send `rate` requests/s for `duration` s whatever the answers do; latency from the scheduled time."""
    import aiohttp

    payload = json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **headers}
    latencies: list[float] = []
    outcome = {"ok": 0, "errors": 0, "timeouts": 0}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()

        async def one(scheduled: float) -> None:
            try:
                async with asyncio.timeout(timeout_s):
                    async with session.post(url, data=payload, headers=hdrs) as resp:
                        await resp.read()
                        status = resp.status
                latencies.append(loop.time() - scheduled)
                if status == 200:
                    outcome["ok"] += 1
                elif status == 504:
                    outcome["timeouts"] += 1
                else:
                    outcome["errors"] += 1
            except TimeoutError:
                latencies.append(timeout_s)
                outcome["timeouts"] += 1
            except Exception:
                latencies.append(loop.time() - scheduled)
                outcome["errors"] += 1

        n = int(rate * duration)
        t0 = loop.time() + 0.05
        tasks = []
        for i in range(n):
            scheduled = t0 + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - t0
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return RateResult(
        rate, n, outcome["ok"], outcome["errors"], outcome["timeouts"], outcome["ok"] / elapsed, p(0.50), p(0.99)
    )


def _step(label: str, url: str, body: dict, headers: dict[str, str], rate: float, args) -> RateResult:
    res = asyncio.run(open_loop(url, body, headers, rate, args.b_duration, args.b_timeout))
    console.log(
        f"(b) {label:>8} {rate:6.1f}/s: achieved {res.achieved:6.1f}/s p50 {res.p50_s * 1000:7.1f} ms "
        f"p99 {res.p99_s * 1000:7.1f} ms errors {res.error_frac:.2%} timeouts {res.timeout_frac:.2%} "
        f"{'pass' if res.passes() else 'FAIL'}"
    )
    time.sleep(args.b_pause)
    return res


def search_rates(
    paths: list[tuple[str, str, dict, dict[str, str]]], args
) -> list[tuple[str, RateResult | None, list[RateResult]]]:
    """Step the rate up for every path together, then bisect between each path's last pass and first fail.

    At each rate the paths run one after the other, so that both see the same machine (these
    machines are noisy: a search run path after path compared a quiet minute with a busy one).
    """
    best: dict[str, RateResult | None] = {label: None for label, *_ in paths}
    fail: dict[str, float | None] = {label: None for label, *_ in paths}
    steps: dict[str, list[RateResult]] = {label: [] for label, *_ in paths}

    def run(label, url, body, headers, rate):
        res = _step(label, url, body, headers, rate, args)
        steps[label].append(res)
        if res.passes():
            best[label] = res
        else:
            fail[label] = rate

    rate = args.b_start
    while rate <= args.b_max and any(f is None for f in fail.values()):
        for label, url, body, headers in paths:
            if fail[label] is None:
                run(label, url, body, headers, rate)
        rate += args.b_step
    for _ in range(args.b_refine):
        for label, url, body, headers in paths:
            if fail[label] is None:
                continue
            lo = best[label].rate if best[label] else 0.0
            mid = (lo + fail[label]) / 2
            if mid - lo >= 1.0:
                run(label, url, body, headers, mid)
    return [(label, best[label], steps[label]) for label, *_ in paths]


def part_b(settings: CommonSettings, tmp: Path, logs: Path, procs: list[Proc], args, stub_url: str) -> None:
    if args.vllm:
        from inference.worker.spec import WorkerSettings, vllm_command, vllm_env

        (port,) = free_ports(1)
        ws = WorkerSettings(
            base_model=Path(args.vllm).resolve(),
            worker_base_port=port,
            data_dir=tmp,
            redis_url=settings.redis_dsn,
            kafka_bootstrap=settings.kafka_bootstrap,
        )
        worker = spawn("vllm", vllm_command(ws, 0), logs, vllm_env(ws, 0))
        procs.append(worker)
        direct = ws.url(0)
        console.log(f"(b) starting vLLM on {direct} (log {worker.log})")
        wait_http(worker, direct + "/health", timeout=ws.start_timeout_s)
        model = ws.served_model_name
    else:
        direct, model = stub_url, "tiny"
    gw, gw_url, key = start_gateway("b", settings, tmp, logs, direct, extra=dict(args.ours_env))
    procs.append(gw)
    body = {
        "messages": [{"role": "user", "content": "Where is my order 12345?"}],
        "max_tokens": args.b_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
    }
    paths = [
        ("direct", direct + "/v1/chat/completions", {**body, "model": model}, {}),
        ("gateway", gw_url + "/v1/chat/completions", body, {"Authorization": f"Bearer {key}"}),
    ]
    for _label, url, b, headers in paths:
        for _ in range(2):  # warm up (vLLM compiles graphs on its first requests)
            asyncio.run(open_loop(url, b, headers, 5.0, 1.0, args.b_timeout))
    rows = search_rates(paths, args)
    table = Table(
        title=f"(b) highest constant rate sustained {args.b_duration:g} s within p99 < 2 s, errors < 1%, "
        f"timeouts < 0.5%; {args.b_tokens}-token answers; "
        f"{'vLLM ' + args.vllm if args.vllm else 'stub upstream (code-path check)'}"
    )
    for col in (
        "path",
        "sustained req/s",
        "achieved",
        "p50 ms",
        "p99 ms",
        "errors",
        "timeouts",
        "x direct",
        "steps (rate:pass)",
    ):
        table.add_column(col, justify="left" if col in ("path", "steps (rate:pass)") else "right")
    direct_rate = rows[0][1].rate if rows[0][1] else 0.0
    for label, best, steps in rows:
        trail = " ".join(f"{s.rate:g}:{'y' if s.passes() else 'n'}" for s in steps)
        if best is None:
            table.add_row(label, "none", "-", "-", "-", "-", "-", "-", trail)
            continue
        table.add_row(
            label,
            f"{best.rate:g}",
            f"{best.achieved:.1f}",
            f"{best.p50_s * 1000:.1f}",
            f"{best.p99_s * 1000:.1f}",
            f"{best.error_frac:.2%}",
            f"{best.timeout_frac:.2%}",
            f"{best.rate / direct_rate:.2f}" if direct_rate else "-",
            trail,
        )
    console.print(table)
    capped = [label for label, best, steps in rows if steps and all(s.passes() for s in steps)]
    if capped:
        console.print(f"{', '.join(capped)}: passed every rate up to --b-max {args.b_max:g}/s (the limit is higher)")
    console.print("goal: the gateway sustains >= 90% of the direct rate")
