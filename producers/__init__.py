"""Kafka producer SDK for client apps (sync and asyncio) and the JSONL replay tool.

Sits on schemas/ only: topics, keys and event validation come from there.
"""

from producers.aio import AsyncChatEventProducer, Delivery
from producers.errors import (
    DeliveryError,
    DeliveryFailed,
    ProducerBackpressure,
    ProducerError,
    UnroutableEvent,
)
from producers.replay import ReplayResult, replay_file
from producers.sdk import ChatEventProducer
from producers.settings import ProducerSettings
from producers.stats import FailedDelivery, ProducerStats

__all__ = [
    "AsyncChatEventProducer",
    "ChatEventProducer",
    "Delivery",
    "DeliveryError",
    "DeliveryFailed",
    "FailedDelivery",
    "ProducerBackpressure",
    "ProducerError",
    "ProducerSettings",
    "ProducerStats",
    "ReplayResult",
    "UnroutableEvent",
    "replay_file",
]
