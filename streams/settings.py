"""Settings of the faust stream processors (metric windows, feedback -> DPO pairs, retrain trigger).

Every field reads `FLYWHEEL_<NAME>` (e.g. `FLYWHEEL_STREAMS_WINDOW_SECONDS=[2]`) or `.env`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from schemas.settings import CommonSettings
from schemas.topology import STREAMS_GROUP

# The agent groups one worker process can run (FLYWHEEL_STREAMS_AGENTS), in their canonical order.
AGENT_GROUPS = ("metrics", "pairs", "trigger")


class StreamSettings(CommonSettings):
    # The base model's served name (CommonSettings.served_model_name) names the model the DPO pairs
    # and retrain jobs belong to; model_version equal to it is the base, "<alias>@vN" its adapters.
    # faust app id: names the consumer group and prefixes every changelog topic (renaming = migration).
    streams_app_id: str = Field(STREAMS_GROUP, description="faust app id")
    # Which agent groups this process runs, comma-separated: metrics (metric windows), pairs (feedback
    # join + pair building), trigger (retrain trigger). All three (the default, what `flywheel up` runs)
    # use the app id as it is; a subset runs as its own faust app "<app id>-<groups joined by '-'>"
    # (own consumer group and changelog topics), e.g. flywheel-streams-metrics and
    # flywheel-streams-pairs-trigger: the metric agent then does not share a process with the join agent.
    streams_agents: str = Field(",".join(AGENT_GROUPS), description="agent groups this worker runs")
    # Where faust keeps its rocksdb table stores; default <data_dir>/streams.
    streams_state_dir: Path | None = Field(None, description="faust table store directory")
    # Tansu reports a wrong highwater ("base offset of the newest batch + 1"): with one record per
    # producer batch that number is the true highwater and changelog recovery after a restart works.
    # Costs producer throughput, so only for the embedded broker.
    streams_embedded_broker: bool = Field(True, description="apply the Tansu work-arounds (one record per batch)")
    # Group join waits session_timeout/2 on Tansu: keep it low for fast starts and restarts.
    streams_metrics_port: int = Field(0, ge=0, description="Prometheus /metrics port (0: none)")
    streams_session_timeout_s: float = Field(6.0, gt=0, description="broker session timeout")
    streams_commit_interval_s: float = Field(1.0, gt=0, description="offset commit interval")
    # faust hard-codes aiokafka's fetch_max_wait_ms=1500, and Tansu answers a fetch only when that wait is
    # over (measured: produce -> consume p50 ~700 ms), a delay paid at every hop (feedback -> join -> pair).
    streams_fetch_max_wait_ms: int = Field(50, ge=0, description="broker fetch long-poll wait (ms)")

    # -- metric windows -----------------------------------------------------------------------
    streams_window_seconds: list[int] = Field([10, 60], description="tumbling window sizes (s)")
    # Event-time lateness: a window closes when the stream's event time passes end + grace.
    streams_window_grace_s: float = Field(2.0, ge=0, description="allowed lateness (event time)")
    # With no event for this long, event time advances with the wall clock so idle windows close.
    streams_window_idle_s: float = Field(2.0, gt=0, description="idle time before wall clock closes windows")
    # Relative accuracy of the latency / ttft quantiles (log-bucket sketch, mergeable).
    streams_quantile_accuracy: float = Field(0.01, gt=0, lt=0.5, description="relative accuracy of quantiles")
    # The in-memory partial aggregates are written to the checkpoint table (one record per partition)
    # at most this often; acks (and so offset commits) wait for that write.
    streams_checkpoint_interval_s: float = Field(0.5, gt=0, description="checkpoint interval per partition")
    streams_checkpoint_max_events: int = Field(20_000, ge=1, description="checkpoint at least every N events")

    # -- feedback -> DPO pairs -----------------------------------------------------------------
    streams_context_ttl_s: float = Field(3600.0, gt=0, description="how long a response stays joinable")
    streams_pending_timeout_s: float = Field(30.0, gt=0, description="wait for a feedback's response, then DLQ")
    # While the worker reads a partition's requests or responses behind their end (a catch-up after a restart or
    # a burst), a feedback's answer may still be in the backlog: its wait is extended by up to this much.
    streams_pending_catch_up_s: float = Field(120.0, ge=0, description="extra wait for a response during a catch-up")
    streams_tick_interval_s: float = Field(1.0, gt=0, description="timer ticks that sweep TTLs and timeouts")
    streams_teacher_url: str = Field("", description="OpenAI-compatible base URL of a teacher model ('' = none)")
    streams_teacher_model: str = Field("teacher", description="model name sent to the teacher")
    streams_teacher_timeout_s: float = Field(10.0, gt=0, description="teacher request timeout")
    streams_pair_min_chars: int = Field(1, ge=1, description="shortest chosen/rejected kept")
    streams_pair_max_chars: int = Field(8000, ge=1, description="longest chosen/rejected kept")
    streams_dedup_threshold: float = Field(0.9, gt=0, le=1, description="MinHash Jaccard threshold of a near-duplicate")
    streams_dedup_recent: int = Field(10_000, ge=1, description="recent pairs the near-duplicate filter remembers")

    # -- retrain trigger ----------------------------------------------------------------------
    streams_retrain_threshold: int = Field(8, ge=1, description="usable pairs that trigger a retrain job")
    # Feedback is training data: the pairs of a job must come from at least this many distinct users, so that one
    # user (or one key posing as one) cannot steer a job alone. Pairs wait (and keep counting) until they do.
    streams_retrain_min_users: int = Field(3, ge=1, description="distinct users behind a retrain job's pairs")
    # Corrections are training data written by users: with this on, a correction's pair waits ("pending") until a
    # person approves it with `flywheel review`; pairs whose chosen answer came from a thumbs-up or the teacher
    # need no review.
    streams_review_corrections: bool = Field(False, description="hold correction pairs for `flywheel review`")
    streams_retrain_cooldown_s: float = Field(60.0, ge=0, description="quiet time after a job ends")

    @field_validator("streams_agents")
    @classmethod
    def _known_agents(cls, value: str) -> str:
        wanted = {name.strip() for name in value.split(",") if name.strip()}
        unknown = wanted - set(AGENT_GROUPS)
        if unknown or not wanted:
            raise ValueError(f"streams_agents: {sorted(unknown) or 'none'} not among {', '.join(AGENT_GROUPS)}")
        return ",".join(name for name in AGENT_GROUPS if name in wanted)

    @property
    def agents(self) -> tuple[str, ...]:
        return tuple(self.streams_agents.split(","))

    @property
    def app_id(self) -> str:
        """The faust app id (= consumer group, changelog topic prefix) of this selection of agents."""
        if self.agents == AGENT_GROUPS:
            return self.streams_app_id
        return "-".join((self.streams_app_id, *self.agents))

    @property
    def state_dir(self) -> Path:
        return (self.streams_state_dir or self.data_dir / "streams").resolve()
