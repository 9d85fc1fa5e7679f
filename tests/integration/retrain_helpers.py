"""Shared by the retrain integration tests: learnable pairs, a golden set for them, an event collector."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer

from schemas.codec import decode
from schemas.events import ChatMessage, DPOPair
from tests.reading import assign_all

GOOD = "Your order shipped and arrives in 3 business days."
BAD = "I do not know."


def pairs(tag: str, n: int = 12, swapped: bool = False, base_model: str = "tiny") -> list[DPOPair]:
    """Consistent corrections (GOOD over BAD) for order questions; swapped: BAD over GOOD."""
    out = []
    for i in range(n):
        chosen, rejected = (BAD, GOOD) if swapped else (GOOD, BAD)
        out.append(
            DPOPair(
                pair_id=f"{tag}-{i}",
                base_model=base_model,
                model_version=base_model,
                prompt=[ChatMessage(role="user", content=f"Where is my order #{10000 + 37 * i}?")],
                chosen=chosen,
                rejected=rejected,
                source="correction",
                session_id=f"s-{tag}-{i}",
                message_id=f"m-{tag}-{i}",
                feedback_event_id=uuid.uuid4(),
            )
        )
    return out


def write_golden(path: Path) -> Path:
    with open(path, "w") as f:
        for i in range(4):
            f.write(
                json.dumps(
                    {"prompt": [{"role": "user", "content": f"Where is my order #{20000 + i}?"}], "expected": GOOD}
                )
                + "\n"
            )
    return path


class Collector:
    """Every event on some topics, from the beginning, in a background thread."""

    def __init__(self, config: dict, topics: list[str]):
        self.events = []
        self._stop = threading.Event()
        self._consumer = Consumer(config)
        assign_all(self._consumer, topics)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is not None and not msg.error():
                self.events.append(decode(msg.value()))
        self._consumer.close()

    def wait(self, predicate, timeout: float = 180.0, what: str = "event"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if predicate(event):
                    return event
            time.sleep(0.2)
        seen = [(type(e).__name__, getattr(e, "status", getattr(e, "action", ""))) for e in self.events]
        raise AssertionError(f"timed out waiting for {what}; saw {seen}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
