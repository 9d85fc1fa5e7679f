"""Every Kafka client's configuration: the bootstrap servers plus the deployment's own client properties.

A production cluster asks clients to authenticate (SASL) and encrypt (TLS). Those are librdkafka properties, set
once for every process in FLYWHEEL_KAFKA_CLIENT_CONFIG (JSON), e.g.

    FLYWHEEL_KAFKA_CLIENT_CONFIG='{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                   "sasl.username": "flywheel", "sasl.password": "...",
                                   "ssl.ca.location": "/etc/kafka/ca.pem"}'

Every confluent-kafka client of the product is configured by `client_config` (a test keeps it so); the faust
stream processors, which speak Kafka through aiokafka, get the same credentials from `faust_credentials`.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

from schemas.settings import CommonSettings

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


@functools.cache
def _deployment_properties() -> dict[str, Any]:
    return dict(CommonSettings().kafka_client_config)


def client_config(bootstrap: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka configuration for a client of `bootstrap`: the deployment's properties, then the client's own."""
    return {"bootstrap.servers": bootstrap, **_deployment_properties(), **(properties or {})}


def faust_credentials(properties: dict[str, Any] | None = None):
    """The faust (aiokafka) credentials equivalent to the librdkafka properties; None for a plain connection."""
    import faust

    props = _deployment_properties() if properties is None else properties
    protocol = str(props.get("security.protocol", "PLAINTEXT")).upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=props.get("ssl.ca.location"))
        if props.get("ssl.certificate.location"):
            context.load_cert_chain(props["ssl.certificate.location"], props.get("ssl.key.location"))
    if protocol in SASL_PROTOCOLS:
        return faust.SASLCredentials(
            username=props.get("sasl.username"),
            password=props.get("sasl.password"),
            ssl_context=context,
            mechanism=str(props.get("sasl.mechanism", "PLAIN")).upper(),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol != "PLAINTEXT":
        raise ValueError(f"security.protocol {protocol!r}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    return None
