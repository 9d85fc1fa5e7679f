"""bench/gpu_dpo.py on the CPU with the tiny preset: the GPU check's code path, and its token count."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("trl")


def test_gpu_dpo_bench_runs_on_cpu_and_counts_the_tokens_trl_trained(tmp_path):
    from bench.gpu_dpo import main

    r = main(
        ["--preset", "tiny", "--device", "cpu", "--steps", "2", "--batch", "2", "--json", str(tmp_path / "r.json")]
    )
    assert (r["device"], r["steps"], r["pairs"]) == ("cpu", 2, 4)
    assert r["tokens"] == r["trl_num_tokens"] > 0  # our count of prompt + chosen + rejected tokens is TRL's
    assert r["tokens_per_s"] > 0 and r["peak_memory_bytes"] > 0
    assert 0.4e6 < r["parameters"] < 1e6  # the tiny model
    assert (tmp_path / "r.json").exists()
