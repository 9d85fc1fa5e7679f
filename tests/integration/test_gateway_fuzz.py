"""Property-based fuzzing of every gateway route from its own OpenAPI schema (schemathesis + hypothesis).

The gateway runs as its own process on the real local stack with the stub upstream, its schema served
(FLYWHEEL_GATEWAY_DOCS). Every operation gets generated cases, valid and not, with the dev key (every scope):
none may answer 5xx, and the gateway must be healthy afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from deploy.ports import free_ports
from tests.conftest import settings_env
from tests.integration.gateway_helpers import ROOT, run_gateway, stop, wait_http

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

pytestmark = pytest.mark.integration
CASES_PER_OPERATION = 100


@pytest.fixture(scope="module")
def gateway(stack, tmp_path_factory):
    stub_port, port = free_ports(2)
    stub = subprocess.Popen([sys.executable, "-m", "bench.upstream_stub", "--port", str(stub_port)], cwd=ROOT)
    stub_url = f"http://127.0.0.1:{stub_port}"
    env = {
        **os.environ,
        **settings_env(stack),
        "FLYWHEEL_DATA_DIR": str(tmp_path_factory.mktemp("fuzz-gateway")),
        "FLYWHEEL_GATEWAY_UPSTREAMS": stub_url,
        "FLYWHEEL_GATEWAY_DISCOVER_WORKERS": "false",
        "FLYWHEEL_GATEWAY_DOCS": "true",
        "FLYWHEEL_LOG_LEVEL": "WARNING",
    }
    try:
        wait_http(stub_url + "/health", stub)
        with run_gateway(env, tmp_path_factory.mktemp("fuzz-log") / "gateway.log", port) as gw:
            yield gw
    finally:
        stop(stub)


def test_no_route_answers_5xx_to_generated_requests(gateway):
    schema = schemathesis.openapi.from_dict(httpx.get(gateway["url"] + "/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/chat", "/feedback", "/session/{session_id}"}
    headers = {"Authorization": f"Bearer {gateway['key']}"}
    ran: dict[str, int] = {}
    server_errors: list[str] = []

    def fuzz(op) -> None:
        label = f"{op.method.upper()} {op.path}"

        @hypothesis_settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def run(case):
            response = case.call(base_url=gateway["url"], headers=headers, timeout=30)
            ran[label] = ran.get(label, 0) + 1
            if response.status_code >= 500:
                server_errors.append(f"{label} {response.status_code}: {response.text[:300]} for {case.body!r:.1000}")

        run()

    for op in operations:
        fuzz(op)
    print("cases run per operation:", ran, "total", sum(ran.values()))
    assert server_errors == []
    assert len(ran) == len(operations) and sum(ran.values()) >= 5 * len(operations)
    assert httpx.get(gateway["url"] + "/health", headers=headers).status_code == 200
