"""Retrain trigger, pure logic: usable pairs per base model -> one RetrainJob `requested` at a time.

State machine per base model (`TriggerState`, stored as JSON in a faust table by the agent):
- a usable pair (source != needs_chosen) not covered by any job joins `pending` (once, by pair id);
- with no job in flight, the cool-down over, len(pending) >= threshold and the pending pairs' thumbs-downs
  sent by at least `min_users` distinct users (one user must not steer a job alone), `decide` emits a job
  naming exactly the pending pair ids; they move to `covered` (a table: pair id -> job id) and never count again;
- a job is in flight from `requested`/`started` until `succeeded`/`failed`; then the cool-down starts.
Jobs requested by anyone (seen on retrain.jobs) also cover their pairs, so replays and a second
trigger instance cannot request the same pairs twice. Job ids are uuid5 of the pair ids: a replayed
decision yields the same job id.
"""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.events import RetrainJob

JOB_NAMESPACE = uuid.UUID("3a9e1f20-5b6c-4d7e-8f90-a1b2c3d4e503")
ENDED = ("succeeded", "failed")
KEEP_ENDED_JOBS = 100
ANONYMOUS = "anonymous"  # a pair without a user (made before pairs named theirs) counts as this one user


def job_id_for(base_model: str, pair_ids: list[str]) -> str:
    return str(uuid.uuid5(JOB_NAMESPACE, base_model + "|" + ",".join(pair_ids)))


@dataclass
class TriggerState:
    base_model: str
    pending: list[str] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=dict)  # pending pair id -> the user who sent its thumbs-down
    in_flight: str | None = None
    cooldown_until: float = 0.0
    ended: list[str] = field(default_factory=list)  # recent finished job ids: a late `started` is ignored

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TriggerState:
        return cls(**data)

    def on_pair(
        self, pair_id: str, usable: bool, covered: MutableMapping[str, str], user_id: str | None = None
    ) -> bool:
        """Count a pair; False when it is unusable, covered already or counted already."""
        if not usable or pair_id in covered or pair_id in self.pending:
            return False
        self.pending.append(pair_id)
        self.users[pair_id] = user_id or ANONYMOUS
        return True

    def distinct_users(self) -> int:
        return len({self.users.get(p, ANONYMOUS) for p in self.pending})

    def on_job(
        self,
        job_id: str,
        status: str,
        pair_ids: list[str],
        at: float,
        cooldown_s: float,
        covered: MutableMapping[str, str],
    ) -> None:
        if status == "requested":
            for pair_id in pair_ids:
                covered[pair_id] = job_id
            taken = set(pair_ids)
            self.pending = [p for p in self.pending if p not in taken]
            self.users = {p: u for p, u in self.users.items() if p not in taken}
        if status in ENDED:
            if job_id not in self.ended:
                self.ended = [*self.ended, job_id][-KEEP_ENDED_JOBS:]
                self.cooldown_until = max(self.cooldown_until, at + cooldown_s)
            if self.in_flight == job_id:
                self.in_flight = None
        elif job_id not in self.ended and self.in_flight is None:
            self.in_flight = job_id

    def decide(
        self, now: float, threshold: int, covered: MutableMapping[str, str], min_users: int = 1
    ) -> RetrainJob | None:
        """A `requested` job when the threshold is reached by pairs of at least `min_users` users, nothing is in
        flight and the cool-down is over."""
        if self.in_flight is not None or now < self.cooldown_until or len(self.pending) < threshold:
            return None
        if self.distinct_users() < min_users:
            return None
        pair_ids = list(self.pending)
        job_id = job_id_for(self.base_model, pair_ids)
        job = RetrainJob(
            event_id=uuid.uuid5(JOB_NAMESPACE, job_id + "|requested"),
            job_id=job_id,
            base_model=self.base_model,
            status="requested",
            pair_ids=pair_ids,
            occurred_at=datetime.fromtimestamp(now, UTC),
            producer="flywheel-streams",
        )
        self.on_job(job_id, "requested", pair_ids, now, 0.0, covered)
        return job
