"""The loop's stage times on the local stack: threshold pair -> job -> adapter -> canary -> 100%.

Starts the whole local stack as `flywheel up` does (`deploy.stack.up`, supervisord: broker, Redis, store, a vLLM
CPU worker, gateway, streams, retrain worker, hot-swap controller) under a temporary data directory on free ports,
with the local loop settings of `LOOP_SETTINGS` (retrain threshold, canary step and sample size) passed to every
service as FLYWHEEL_* environment variables. Then it turns the loop once:

- steady traffic through the gateway (`Traffic`: an open-loop generator at `--rate` requests/s, many users so
  that sticky routing splits them; every answer rated by its user, thumbs up: users happy with every version);
- simulated users ask support questions with the official `openai` client and thumb the answers down with a
  correction through `/feedback`, until the streams' trigger requests a retrain job;
- it waits for the job's adapter to be promoted to 100% (Deployment `promoted`), then reads the stage times from
  the view `flywheel.v_loop_stages` (schemas/views.py) and prints them.

Goal: under 3 minutes from the pair that crossed the threshold to 100% promotion. The baseline measured in the same
run is the canary's floor: the plan's steps times the step length (no canary can promote faster).

The stack and its users are `deploy.sandbox` and `deploy.load`, which the end-to-end tests use too.

Example:
    python -m bench.loop                      # rate 20/s, default loop settings
    python -m bench.loop --rate 25 --keep     # keep the data directory (logs) afterwards
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from deploy.load import Traffic, send_corrections
from deploy.sandbox import Events, LocalLoop, stage_table, wait_stage_row

GOAL_S = 180.0


def canary_floor_s(env: dict[str, str]) -> float:
    plan = [w for w in json.loads(env.get("FLYWHEEL_CANARY_PLAN", "[5, 20, 50, 100]"))]
    return (len(plan) - 1) * float(env["FLYWHEEL_CANARY_STEP_S"])


def run_good_loop(loop: LocalLoop, events: Events, traffic: Traffic, timeout: float = 600.0) -> tuple[str, str]:
    """Corrections until a job is requested; wait for its adapter's promotion. Returns (job id, version)."""
    from schemas.events import Deployment, RetrainJob

    since = time.time()
    send_corrections(loop, events, since=since)
    job = events.wait(
        lambda e: isinstance(e, RetrainJob) and e.status == "requested" and e.occurred_at.timestamp() >= since - 1,
        30,
        "job requested",
    )
    done = events.wait(
        lambda e: isinstance(e, RetrainJob) and e.job_id == job.job_id and e.status in ("succeeded", "failed"),
        timeout,
        f"job {job.job_id} to end",
    )
    if done.status != "succeeded" or done.verdict != "accepted":
        raise AssertionError(f"job {job.job_id} ended {done.status} {done.verdict}: {done.error}")
    version = done.adapter_version
    events.wait(
        lambda e: isinstance(e, Deployment) and e.version == version and e.action == "promoted",
        timeout,
        f"{version} promoted",
        fail=lambda e: isinstance(e, Deployment) and e.version == version and e.action == "rolled_back",
    )
    return job.job_id, version


def main() -> None:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="steady traffic, requests/s")
    parser.add_argument("--users", type=int, default=200, help="simulated users of the steady traffic")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs) afterwards")
    parser.add_argument("--set", action="append", default=[], metavar="FLYWHEEL_X=V", help="override a setting")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # take the stack down on SIGTERM too
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("urllib3.connectionpool", "clickhouse_connect"):  # health probes of services still starting
        logging.getLogger(noisy).setLevel(logging.ERROR)
    console = Console()
    overrides = dict(item.split("=", 1) for item in args.set)
    data_dir = Path(tempfile.mkdtemp(prefix="flywheel-loop-"))
    try:
        console.print(f"starting the local stack in {data_dir} ...")
        t0 = time.monotonic()
        with LocalLoop(data_dir, overrides) as loop:
            console.print(f"stack up in {time.monotonic() - t0:.0f} s; gateway {loop.gateway_url}")
            from schemas.topics import MODEL_DEPLOYMENTS, RETRAIN_JOBS

            events = Events(loop.settings.kafka_bootstrap, [RETRAIN_JOBS.name, MODEL_DEPLOYMENTS.name])
            traffic = Traffic(loop, rate=args.rate, users=args.users).start()
            try:
                job_id, version = run_good_loop(loop, events, traffic)
            finally:
                traffic.stop()
                events.close()
            row = wait_stage_row(loop.store(), job_id)
            failed = [r for r in traffic.results if r.status != 200]
            console.print(stage_table(row, GOAL_S, canary_floor_s(loop.env)))
            console.print(
                f"{version} promoted; traffic {len(traffic.results)} requests at "
                f"{traffic.achieved_rate():.1f}/s, {len(failed)} failed"
            )
            console.print(f'flywheel sql "SELECT * FROM flywheel.v_loop_stages" gives the same row (job {job_id})')
            ok = row["total_s"] is not None and row["total_s"] < GOAL_S
    finally:
        if args.keep:
            console.print(f"data directory kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
