"""The topic registry: every Kafka topic Flywheel uses, declared once.

Partition counts are explicit because Tansu auto-creates unknown topics with 4 partitions
and faust refuses to start when a source topic and its changelog disagree.
Renaming a topic is a migration: consumers and tables are bound to these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import (
    ChatRequest,
    ChatResponse,
    DeadLetter,
    Deployment,
    DPOPair,
    Event,
    Feedback,
    HumanReview,
    InferenceLatency,
    MetricsWindow,
    RetrainJob,
    Retrieval,
    TrainingMetrics,
)
from schemas.kafka import client_config

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    value_type: type[Event]
    key_field: str  # the value's field whose string is the message key
    table: str  # ClickHouse table the sink writes this topic to
    partitions: int = 3
    retention_ms: int = 7 * DAY_MS
    cleanup_policy: str = "delete"

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    def key(self, event: Event) -> bytes:
        return str(getattr(event, self.key_field)).encode()

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


CHAT_REQUESTS = Topic("chat.requests", ChatRequest, "session_id", "chat_requests")
CHAT_RESPONSES = Topic("chat.responses", ChatResponse, "session_id", "chat_responses")
CHAT_FEEDBACK = Topic("chat.feedback", Feedback, "session_id", "feedback")
INFERENCE_LATENCY = Topic("inference.latency", InferenceLatency, "model_version", "inference_latency")
METRICS_WINDOWS = Topic("metrics.windows", MetricsWindow, "model_version", "metrics_windows")
DPO_PAIRS = Topic("dpo.pairs", DPOPair, "base_model", "dpo_pairs", retention_ms=30 * DAY_MS)
RETRAIN_JOBS = Topic("retrain.jobs", RetrainJob, "base_model", "retrain_jobs", retention_ms=30 * DAY_MS)
TRAINING_METRICS = Topic("retrain.metrics", TrainingMetrics, "job_id", "training_metrics", partitions=1)
MODEL_DEPLOYMENTS = Topic(
    "model.deployments", Deployment, "alias", "model_deployments", partitions=1, retention_ms=30 * DAY_MS
)
# People's scores of sampled answers (`flywheel review import`): a trickle, kept as long as the pairs
HUMAN_REVIEWS = Topic(
    "reviews.human", HumanReview, "message_id", "human_reviews", partitions=1, retention_ms=30 * DAY_MS
)
# The gateway's knowledge-base lookups for retrieval-augmented answers
RETRIEVALS = Topic("retrieval.queries", Retrieval, "session_id", "retrievals")

TOPICS: tuple[Topic, ...] = (
    CHAT_REQUESTS,
    CHAT_RESPONSES,
    CHAT_FEEDBACK,
    INFERENCE_LATENCY,
    METRICS_WINDOWS,
    DPO_PAIRS,
    RETRAIN_JOBS,
    TRAINING_METRICS,
    MODEL_DEPLOYMENTS,
    HUMAN_REVIEWS,
    RETRIEVALS,
)
BY_NAME: dict[str, Topic] = {t.name: t for t in TOPICS}
BY_EVENT: dict[type[Event], Topic] = {t.value_type: t for t in TOPICS}

DLQ_PARTITIONS = 1
DLQ_VALUE = DeadLetter
DLQ_TABLE = "dead_letters"


def all_topic_names() -> list[str]:
    """Every topic with its DLQ, in declaration order."""
    return [name for t in TOPICS for name in (t.name, t.dlq)]


def create_topics(bootstrap: str, timeout: float = 30.0) -> list[str]:
    """Create every topic and DLQ that does not exist yet; return the names created. Idempotent."""
    from confluent_kafka.admin import NewTopic

    wanted = []
    for t in TOPICS:
        wanted.append(NewTopic(t.name, num_partitions=t.partitions, config=t.config()))
        wanted.append(NewTopic(t.dlq, num_partitions=DLQ_PARTITIONS, config=t.config()))
    return ensure_topics(bootstrap, wanted, timeout)


def ensure_topics(bootstrap: str, topics: list, timeout: float = 30.0) -> list[str]:
    """Create those of `topics` (confluent_kafka NewTopic) that do not exist; return the names created.
    Another process creating one meanwhile is fine."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(bootstrap))
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [t for t in topics if t.topic not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout)
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created
