"""Child processes for the gateway benchmark: a server started with its own log, the wait for its HTTP
health, our gateway and the LiteLLM proxy on free ports, a server under load (`Target`) and the CPU time a
server process has used. Also the console that every part of the benchmark prints to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

from deploy.ports import free_ports
from schemas.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[1]

console = Console(width=160)  # a wide table also when the output is a file


# -- processes -----------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(name: str, cmd: list[str], logs: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Proc:
    log = logs / f"{name}.log"
    f = open(log, "wb")  # noqa: SIM115 - the child owns it
    popen = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=f, stderr=subprocess.STDOUT)
    return Proc(name, popen, log)


def wait_http(proc: Proc, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise TimeoutError(f"{proc.name}: {url} did not answer in {timeout:.0f}s:\n{proc.tail()}")


@dataclass
class Target:
    """One server under load: where, what to POST, and the per-connection body variation."""

    label: str
    url: str
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    session_field: bool = False  # cycle `session_id` over SESSIONS ids (the /chat routes)
    pid: int | None = None  # the server process: its CPU time per request is reported (with its children)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its children (uvicorn workers), from /proc (Linux)."""
    if pid is None:
        return 0.0
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += cpu_seconds(int(child))
    except (OSError, IndexError, ValueError):
        pass
    return total


def gateway_env(
    settings: CommonSettings, data_dir: Path, port: int, upstream: str, extra: dict[str, str]
) -> dict[str, str]:
    return {
        "FLYWHEEL_DATA_DIR": str(data_dir),
        "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FLYWHEEL_REDIS_URL": settings.redis_dsn,
        "FLYWHEEL_GATEWAY_PORT": str(port),
        "FLYWHEEL_GATEWAY_UPSTREAMS": upstream,
        "FLYWHEEL_GATEWAY_DISCOVER_WORKERS": "false",
        # the dev key's limits are far above a benchmark's thousands of requests/s (both still checked per request)
        "FLYWHEEL_GATEWAY_DEV_KEY_RATE_PER_MINUTE": "1000000000",
        "FLYWHEEL_GATEWAY_DEV_KEY_TOKENS_PER_MINUTE": "1000000000",
        **extra,
    }


def start_gateway(
    label: str,
    settings: CommonSettings,
    tmp: Path,
    logs: Path,
    upstream: str,
    code_dir: Path = ROOT,
    extra: dict[str, str] | None = None,
) -> tuple[Proc, str, str]:
    """Our gateway as its own process; returns (process, base URL, its dev API key)."""
    (port,) = free_ports(1)
    data_dir = tmp / f"gw-{label}"
    env = gateway_env(settings, data_dir, port, upstream, extra or {})
    env["PYTHONPATH"] = str(code_dir)
    proc = spawn(f"gateway-{label}", [sys.executable, "-m", "inference.gateway.app"], logs, env, cwd=code_dir)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, url + "/health")
    key = (data_dir / "dev-api-key").read_text().strip()
    return proc, url, key


def start_litellm(exe: str, tmp: Path, logs: Path, upstream: str) -> tuple[Proc, str, str]:
    """The LiteLLM proxy on the stub, one worker per core, a master key as its only key (it refuses to start
    without one); returns (process, base URL, the key)."""
    (port,) = free_ports(1)
    config = tmp / "litellm.yaml"
    key = f"sk-{uuid.uuid4().hex}"
    model = {"model": "openai/tiny", "api_base": f"{upstream}/v1", "api_key": "unused"}
    config.write_text(  # JSON is YAML
        json.dumps(
            {"model_list": [{"model_name": "tiny", "litellm_params": model}], "general_settings": {"master_key": key}}
        )
    )
    workers = str(os.cpu_count() or 1)
    cmd = [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", workers]
    proc = spawn("litellm", cmd, logs, {"LITELLM_LOG": "ERROR"})
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, url + "/health/liveliness", timeout=180.0)
    return proc, url, key
