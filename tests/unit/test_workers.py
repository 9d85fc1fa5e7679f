"""vLLM worker command lines, environment and readiness records (pure functions, no I/O)."""

import json
from pathlib import Path

import pytest

from inference.keys import routes_key, worker_key
from inference.worker.spec import (
    WorkerSettings,
    context_length,
    readiness_record,
    routed_adapters,
    vllm_command,
    vllm_env,
    worker_programs,
)


def settings(**kw) -> WorkerSettings:
    base = dict(base_model=Path("/models/tiny"), served_model_name="tiny", redis_url="redis://127.0.0.1:1/0")
    return WorkerSettings(_env_file=None, **{**base, **kw})


def flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_cpu_command():
    cmd = vllm_command(settings(device="cpu"), 2, python="py")
    # Lower priority on CPU: the gateway and Redis share the cores and must not be starved.
    assert cmd[:6] == ["nice", "-n", "10", "py", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(cmd, "--model") == "/models/tiny"
    assert flag(cmd, "--served-model-name") == "tiny"
    assert flag(cmd, "--port") == "8002"
    assert flag(cmd, "--host") == "127.0.0.1"
    assert flag(cmd, "--dtype") == "float32"
    assert flag(cmd, "--max-model-len") == "4096"  # no config.json to read at /models/tiny: the default cap
    assert flag(cmd, "--max-lora-rank") == "8"
    assert flag(cmd, "--max-loras") == "4"
    assert "--enable-lora" in cmd
    assert "--gpu-memory-utilization" not in cmd


def test_cpu_nice_zero_keeps_the_priority():
    assert vllm_command(settings(device="cpu", cpu_nice=0), 0, python="py")[0] == "py"


def test_gpu_command_differs_only_in_dtype_and_memory():
    s_cpu = settings(device="cpu", cpu_nice=0)
    s_gpu = settings(device="gpu", gpu_memory_utilization=0.45)
    cpu, gpu = vllm_command(s_cpu, 0, python="py"), vllm_command(s_gpu, 0, python="py")
    assert flag(gpu, "--dtype") == "auto"
    assert flag(gpu, "--gpu-memory-utilization") == "0.45"

    def strip(cmd):
        drop = {i + k for i, a in enumerate(cmd) if a in ("--dtype", "--gpu-memory-utilization") for k in (0, 1)}
        return [a for i, a in enumerate(cmd) if i not in drop]

    assert strip(cpu) == strip(gpu)


@pytest.mark.parametrize("own,served", [(8192, 4096), (512, 512), (None, 4096)])
def test_the_context_is_the_models_own_up_to_the_cap(tmp_path, own, served):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": own}))
    assert context_length(settings(base_model=tmp_path)) == served
    assert context_length(settings(base_model=tmp_path, max_model_len=300)) == 300  # a setting wins


def test_configurable_limits_and_extra_args():
    cmd = vllm_command(
        settings(
            max_model_len=4096,
            max_loras=2,
            max_lora_rank=64,
            worker_base_port=9000,
            vllm_extra_args="--enforce-eager --seed 7",
        ),
        1,
        python="py",
    )
    assert flag(cmd, "--max-model-len") == "4096"
    assert flag(cmd, "--max-loras") == "2"
    assert flag(cmd, "--max-lora-rank") == "64"
    assert flag(cmd, "--port") == "9001"
    assert cmd[-3:] == ["--enforce-eager", "--seed", "7"]


def test_env_cpu_vs_gpu():
    cpu = vllm_env(settings(device="cpu", cpu_kvcache_gib=2, cpu_reserved_cpus=0), 0)
    assert cpu["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert cpu["HF_HUB_OFFLINE"] == "1"
    assert cpu["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert cpu["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert cpu["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert cpu["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the model runs in the engine process
    gpu = vllm_env(settings(device="gpu"), 0)
    assert gpu["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert not any(k.startswith("VLLM_CPU_") for k in gpu) and "VLLM_ENABLE_V1_MULTIPROCESSING" not in gpu
    separate = vllm_env(settings(device="cpu", cpu_model_in_engine=False), 0)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in separate


def test_reserved_cpus_left_to_vllm_by_default():
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in vllm_env(settings(), 0)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_BASE_MODEL", "/models/Qwen2.5-7B-Instruct")
    monkeypatch.setenv("FLYWHEEL_SERVED_MODEL_NAME", "qwen")
    monkeypatch.setenv("FLYWHEEL_DEVICE", "gpu")
    monkeypatch.setenv("FLYWHEEL_WORKERS", "2")
    s = WorkerSettings(_env_file=None)
    assert s.base_model == Path("/models/Qwen2.5-7B-Instruct")
    assert [p.name for p in worker_programs(s)] == ["vllm-0", "vllm-1"]
    assert worker_programs(s, python="py")[1].command == ["py", "-m", "inference.worker.wrapper", "--index", "1"]
    assert flag(vllm_command(s, 0), "--served-model-name") == "qwen"


def test_bad_device_rejected():
    with pytest.raises(ValueError):
        settings(device="tpu")


@pytest.mark.parametrize(
    "routes, registry, wanted, unknown",
    [
        ({}, {}, {}, []),
        ({"tiny": "100"}, {"support@v1": "/a/v1"}, {}, []),
        ({"tiny": "90", "support@v1": "10"}, {"support@v1": "/a/v1"}, {"support@v1": "/a/v1"}, []),
        ({"v1": "0", "v2": "100"}, {"v1": "/a/v1", "v2": "/a/v2"}, {"v1": "/a/v1", "v2": "/a/v2"}, []),
        ({"v3": "100"}, {"v1": "/a/v1"}, {}, ["v3"]),
    ],
)
def test_routed_adapters(routes, registry, wanted, unknown):
    assert routed_adapters(routes, registry, "tiny") == (wanted, unknown)


def test_keys():
    assert routes_key("tiny") == "flywheel:routes:tiny"
    assert worker_key(3) == "flywheel:workers:3"


@pytest.mark.parametrize(
    "healthy, loaded, wanted, ready, missing",
    [
        (False, [], [], False, []),
        (True, [], [], True, []),
        (True, [], ["v1"], False, ["v1"]),
        (True, ["v1"], ["v1"], True, []),
        (True, ["v1", "v0"], ["v1"], True, []),
        (False, ["v1"], ["v1"], False, []),
    ],
)
def test_readiness_record(healthy, loaded, wanted, ready, missing):
    t = 1767322245.0
    rec = readiness_record(settings(), 1, healthy=healthy, loaded=loaded, wanted=wanted, started_at=t, pid=42, now=t)
    assert rec["ready"] is ready
    assert rec["missing"] == missing
    assert rec["adapters"] == sorted(loaded)
    assert rec["url"] == "http://127.0.0.1:8001"
    assert rec["model"] == "tiny"
    assert rec["started_at"] == rec["heartbeat_at"] == t


def test_a_worker_in_a_container_listens_on_its_port_and_advertises_its_name():
    pod = settings(worker_host="0.0.0.0", worker_port=8000, worker_advertise_host="vllm-1")
    command = vllm_command(pod, 1)
    assert flag(command, "--port") == "8000" and flag(command, "--host") == "0.0.0.0"
    assert pod.advertised_url(1) == "http://vllm-1:8000"
    local = settings()  # one host, several workers: base port + index
    assert local.advertised_url(1) == local.url(1) == f"http://127.0.0.1:{local.worker_base_port + 1}"


def test_serve_takes_a_statefulset_pods_ordinal_as_the_worker_index():
    import click

    from deploy.cli_serve import hostname_index, service_argv

    assert hostname_index("vllm-12") == 12
    with pytest.raises(click.UsageError):
        hostname_index("vllm")
    assert service_argv("worker", 3)[-3:] == ["inference.worker.wrapper", "--index", "3"]
    with pytest.raises(click.UsageError):
        service_argv("gateway", 0)
