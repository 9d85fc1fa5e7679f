"""The retrain trigger: usable pairs and jobs' statuses -> one state machine per base model -> retrain.jobs.

dpo.pairs + retrain.jobs --[forward_to_trigger]--> streams.trigger-input (1 partition)
streams.trigger-input --[retrain_trigger]--> retrain.jobs   (tables trigger-state, trigger-covered)
[trigger_tick timer] --> streams.trigger-input
"""

from __future__ import annotations

import logging
import time

import faust

from schemas.codec import decode, encode
from schemas.errors import EventError
from schemas.events import DPOPair, RetrainJob
from schemas.internal import TICK, TriggerInput
from streams import counters
from streams.settings import StreamSettings
from streams.trigger import TriggerState
from streams.wiring import Channels, Shared

log = logging.getLogger(__name__)

TABLE_TRIGGER_STATE = "trigger-state"
TABLE_TRIGGER_COVERED = "trigger-covered"
AGENT_FORWARD_TO_TRIGGER = "streams.forward-to-trigger"
AGENT_RETRAIN_TRIGGER = "streams.retrain-trigger"


def usable(pair: DPOPair) -> bool:
    """A pair that may train: it has a chosen answer, and a review (when one was asked) approved it."""
    return pair.source != "needs_chosen" and pair.chosen is not None and pair.review in ("none", "approved")


def install(app: faust.App, ch: Channels, shared: Shared, settings: StreamSettings) -> None:
    """Register the forwarding and trigger agents and the tick timer."""
    trigger_state = app.Table(TABLE_TRIGGER_STATE, partitions=1)  # base model -> TriggerState
    trigger_covered = app.Table(TABLE_TRIGGER_COVERED, partitions=1)  # pair id -> job id

    @trigger_state.on_recover
    async def _trigger_recovered() -> None:
        shared.recovered.add(TABLE_TRIGGER_STATE)

    @app.agent(ch.trigger_source, name=AGENT_FORWARD_TO_TRIGGER)
    async def forward_to_trigger(stream: faust.StreamT) -> None:
        """dpo.pairs and retrain.jobs are keyed by base model but partitioned by different producers:
        funnel both into one single-partition topic so one state machine per model sees both in order."""
        async for event in stream.events():
            message = event.message
            try:
                parsed = decode(event.value)
            except EventError as exc:
                shared.skip_undecodable(message.topic, message.partition, message.offset, exc)
                continue
            if isinstance(parsed, DPOPair):
                rec = TriggerInput(
                    kind="pair",
                    base_model=parsed.base_model,
                    pair_id=parsed.pair_id,
                    user_id=parsed.user_id,
                    usable=usable(parsed),
                )
            elif isinstance(parsed, RetrainJob):
                rec = TriggerInput(
                    kind="job",
                    base_model=parsed.base_model,
                    job_id=parsed.job_id,
                    status=parsed.status,
                    pair_ids=parsed.pair_ids,
                    at=parsed.occurred_at.timestamp(),
                )
            else:
                continue
            await ch.trigger_input.send(value=rec.model_dump_json().encode(), partition=0)

    @app.agent(ch.trigger_input, name=AGENT_RETRAIN_TRIGGER)
    async def retrain_trigger(stream: faust.StreamT) -> None:
        async for value in stream:
            rec, now = TriggerInput.model_validate_json(value), time.time()
            models = [rec.base_model] if rec.base_model is not None else list(trigger_state.keys())
            for base_model in models:
                state = (
                    TriggerState.from_json(trigger_state[base_model])
                    if base_model in trigger_state
                    else TriggerState(base_model)
                )
                if rec.kind == "pair":
                    state.on_pair(rec.pair_id, rec.usable, trigger_covered, rec.user_id)
                elif rec.kind == "job":
                    state.on_job(
                        rec.job_id,
                        rec.status,
                        rec.pair_ids,
                        rec.at,
                        settings.streams_retrain_cooldown_s,
                        trigger_covered,
                    )
                job = state.decide(
                    now, settings.streams_retrain_threshold, trigger_covered, settings.streams_retrain_min_users
                )
                if job is not None:  # send before saving: a crash in between re-decides the same job id
                    await ch.retrain_jobs.send(key=base_model.encode(), value=encode(job))
                    counters.JOBS_REQUESTED.inc()
                    log.info("retrain job requested", extra={"job_id": job.job_id, "pairs": len(job.pair_ids)})
                trigger_state[base_model] = state.to_json()

    @app.timer(interval=settings.streams_tick_interval_s)
    async def trigger_tick() -> None:
        """Cool-downs end without an event: a tick makes every model's state machine decide again."""
        if TABLE_TRIGGER_STATE not in shared.recovered:
            return
        await ch.trigger_input.send(value=TICK.model_dump_json().encode(), partition=0)
