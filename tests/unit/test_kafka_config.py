"""Every Kafka client of the product gets the deployment's client properties (SASL, TLS): one place builds them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas import kafka

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("consumers", "deploy", "inference", "producers", "retrain", "schemas", "streams")
SASL = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "flywheel",
    "sasl.password": "s3cret",
}


@pytest.fixture
def deployment(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_KAFKA_CLIENT_CONFIG", '{"security.protocol": "SASL_SSL", "sasl.username": "flywheel"}')
    kafka._deployment_properties.cache_clear()
    yield
    kafka._deployment_properties.cache_clear()


def test_no_client_configures_kafka_by_itself():
    pattern = re.compile(r"""["']bootstrap\.servers["']""")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in PRODUCT
        for path in (ROOT / package).rglob("*.py")
        if path.name != "kafka.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"build Kafka client configs with schemas.kafka.client_config: {found}"


def test_the_deployments_properties_reach_consumers_and_producers(deployment):
    from producers.settings import ProducerSettings

    config = kafka.client_config("broker:9092", {"group.id": "g"})
    assert config == {
        "bootstrap.servers": "broker:9092",
        "security.protocol": "SASL_SSL",
        "sasl.username": "flywheel",
        "group.id": "g",
    }
    producer = ProducerSettings(kafka_bootstrap="broker:9092").kafka_config()
    assert producer["security.protocol"] == "SASL_SSL" and producer["enable.idempotence"] is True


def test_faust_gets_the_same_credentials():
    import faust

    assert kafka.faust_credentials({}) is None
    sasl = kafka.faust_credentials(SASL)
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.username, sasl.password, sasl.mechanism.name) == ("flywheel", "s3cret", "SCRAM_SHA_512")
    assert sasl.ssl_context is not None  # SASL_SSL: encrypted too
    plain = kafka.faust_credentials({**SASL, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"})
    assert plain.ssl_context is None and plain.mechanism.name == "PLAIN"
    assert isinstance(kafka.faust_credentials({"security.protocol": "SSL"}), faust.SSLCredentials)
    with pytest.raises(ValueError, match="security.protocol"):
        kafka.faust_credentials({"security.protocol": "KERBEROS"})
