"""Simulated canary rollouts through the controller's own decision code, with Poisson traffic.

The decisions are `inference.controller.rollout`'s.

Each rollout: total traffic of `rate` requests/s (Poisson per poll), split between the canary and the current
version by the routed weight; every response fails with the version's error rate, every successful answer is
rated with probability 0.8 and thumbed down with the version's thumbs-down rate, latencies are lognormal. The
controller looks every `--poll-s` seconds with the cumulative figures since the canary started, exactly as
inference/controller/deployer.py does (first weight from the measured recent rate, steps, holds, max duration).

Three experiments, with the default Policy unless told otherwise:
1. a version with no real difference (thumbs-down 0.2, errors 0.01): the share rolled back for harm is the false
   alarm rate (must be <= alpha = 5%), with the shares promoted and inconclusive, samples and minutes to decide;
2. a version with twice the thumbs-down rate (0.4): the share rolled back for harm is the power (must be >= 95%);
3. how long a good version (thumbs-down 0.2 -> 0.1) and a neutral one take at several traffic rates.

Example:
    python -m bench.rollout_sim                 # 1,000 rollouts per row
    python -m bench.rollout_sim --runs 200 --seed 7
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from inference.controller.rollout import Figures, Outcome, Policy, decide, first_weight, next_weight

RATED_P = 0.8  # share of successful answers their user rates
RATE_WINDOW_S = 120.0  # the controller's window for the recent traffic rate (canary_rate_window_s)


@dataclass(frozen=True)
class Arm:
    thumbs_down: float = 0.2
    errors: float = 0.01
    latency_median_ms: float = 300.0
    latency_sigma: float = 0.5  # of log latency: mean 340 ms, p95 about 680 ms


@dataclass
class Tally:
    responses: int = 0
    errors: int = 0
    rated: int = 0
    down: int = 0
    lat_sum: float = 0.0
    lat_sq: float = 0.0

    def add(self, rng: np.random.Generator, n: int, arm: Arm) -> None:
        if n <= 0:
            return
        e = int(rng.binomial(n, arm.errors))
        ok = n - e
        rated = int(rng.binomial(ok, RATED_P)) if ok else 0
        self.responses += n
        self.errors += e
        self.rated += rated
        self.down += int(rng.binomial(rated, arm.thumbs_down)) if rated else 0
        if ok:
            lat = rng.lognormal(math.log(arm.latency_median_ms), arm.latency_sigma, ok)
            self.lat_sum += float(lat.sum())
            self.lat_sq += float(lat @ lat)

    def figures(self, version: str) -> Figures:
        ok = self.responses - self.errors
        mean = self.lat_sum / ok if ok else None
        sd = math.sqrt(max(self.lat_sq - self.lat_sum * self.lat_sum / ok, 0.0) / (ok - 1)) if ok > 1 else None
        return Figures(version, self.responses, self.errors, self.rated, self.down, None, mean, sd)


@dataclass(frozen=True)
class Result:
    outcome: str  # "harm", "promoted" or "inconclusive"
    seconds: float
    canary_samples: int  # canary responses when decided
    samples: int  # responses of both versions when decided


def simulate(rng: np.random.Generator, policy: Policy, rate: float, canary: Arm, current: Arm, poll_s: float) -> Result:
    """One rollout, from the first weight to promotion or rollback."""
    measured = rng.poisson(rate * RATE_WINDOW_S) / RATE_WINDOW_S
    weight = first_weight(policy.plan, measured, policy.min_canary_rate, policy.max_first_weight)
    c, o = Tally(), Tally()
    t = step_t = 0.0
    step_start_responses = 0
    while True:
        t += poll_s
        n = int(rng.poisson(rate * poll_s))
        n_c = int(rng.binomial(n, weight / 100)) if n else 0
        c.add(rng, n_c, canary)
        o.add(rng, n - n_c, current)
        d = decide(
            c.figures("canary"),
            o.figures("current"),
            policy,
            step_elapsed_s=t - step_t,
            total_elapsed_s=t,
            step_responses=c.responses - step_start_responses,
        )
        if d.outcome is Outcome.HOLD:
            continue
        if d.outcome is Outcome.ROLLBACK:
            return Result(d.category, t, c.responses, c.responses + o.responses)
        weight = next_weight(policy.plan, weight)
        if weight >= 100:
            return Result("promoted", t, c.responses, c.responses + o.responses)
        step_t, step_start_responses = t, c.responses


def run_many(
    runs: int, seed: int, policy: Policy, rate: float, canary: Arm, current: Arm, poll_s: float
) -> list[Result]:
    rng = np.random.default_rng(seed)
    return [simulate(rng, policy, rate, canary, current, poll_s) for _ in range(runs)]


def share(results: list[Result], outcome: str) -> float:
    return sum(r.outcome == outcome for r in results) / len(results)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def outcome_table(title: str, rows: list[tuple[str, list[Result]]]) -> Table:
    table = Table(title=title)
    for col in ("canary", "harm", "promoted", "inconclusive", "canary n p50/p90", "all n p50/p90", "min p50/p90"):
        table.add_column(col, justify="left" if col == "canary" else "right")
    for label, results in rows:
        can = [r.canary_samples for r in results]
        both = [r.samples for r in results]
        minutes = [r.seconds / 60 for r in results]
        table.add_row(
            label,
            f"{share(results, 'harm'):.1%}",
            f"{share(results, 'promoted'):.1%}",
            f"{share(results, 'inconclusive'):.1%}",
            f"{pct(can, 50):.0f} / {pct(can, 90):.0f}",
            f"{pct(both, 50):.0f} / {pct(both, 90):.0f}",
            f"{pct(minutes, 50):.1f} / {pct(minutes, 90):.1f}",
        )
    return table


def timing_table(runs: int, seed: int, policy: Policy, rates: list[float], poll_s: float) -> Table:
    table = Table(title="minutes to promotion p50 / p90 (share promoted)")
    table.add_column("requests/s", justify="right")
    table.add_column("first", justify="right")
    for label in ("good: down 0.2 -> 0.1", "neutral: 0.2 -> 0.2"):
        table.add_column(label, justify="right")
    base = Arm()
    for i, rate in enumerate(rates):
        cells = []
        for j, canary in enumerate((Arm(thumbs_down=0.1), base)):
            results = run_many(runs, seed + 100 * i + j, policy, rate, canary, base, poll_s)
            promoted = [r.seconds / 60 for r in results if r.outcome == "promoted"]
            cells.append(f"{pct(promoted, 50):.1f} / {pct(promoted, 90):.1f} ({share(results, 'promoted'):.0%})")
        weight = first_weight(policy.plan, rate, policy.min_canary_rate, policy.max_first_weight)
        table.add_row(f"{rate:g}", f"{weight}%", *cells)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="rollouts per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=2.0, help="total requests/s of experiments 1 and 2")
    parser.add_argument("--poll-s", type=float, default=5.0, help="seconds between the controller's looks")
    parser.add_argument("--rates", default="0.5,1,2,20", help="total requests/s of the timing table")
    args = parser.parse_args(argv)
    policy = Policy()
    console = Console(width=max(Console().width, 100))
    console.print(f"policy: {policy}")
    console.print(
        "versions: thumbs-down 0.2, errors 0.01, latency lognormal (median 300 ms, sigma 0.5), "
        f"{RATED_P:.0%} of answers rated; 'n' counts responses"
    )
    base = Arm()
    neutral = run_many(args.runs, args.seed, policy, args.rate, base, base, args.poll_s)
    worse = run_many(args.runs, args.seed + 1, policy, args.rate, Arm(thumbs_down=0.4), base, args.poll_s)
    console.print(
        outcome_table(
            f"{args.runs} rollouts at {args.rate:g} requests/s, a look every {args.poll_s:g} s",
            [("neutral", neutral), ("2x thumbs-down", worse)],
        )
    )
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    console.print(timing_table(args.runs, args.seed + 2, policy, rates, args.poll_s))


if __name__ == "__main__":
    main()
