"""benchmarks.gpu_step on the CPU (the CUDA kinds and the floors need a GPU:
benchmarks/device_check.sh)."""
from __future__ import annotations

import pytest

from benchmarks import gpu_step


def test_kinds_map_to_the_train_options(small_config):
    c = gpu_step._config("graphs-compile", small_config)
    assert (c.train.compile, c.train.cuda_graphs, c.train.precision) == (True, True, "fp32")
    c = gpu_step._config("graphs-bf16", small_config)
    assert (c.train.compile, c.train.cuda_graphs, c.train.precision) == (False, True, "bf16")
    c = gpu_step._config("eager", small_config)
    assert (c.train.compile, c.train.cuda_graphs) == (False, False)


def test_measure_times_full_batches_in_blocks_on_cpu(synthetic_dataset, small_config):
    results = gpu_step.measure(synthetic_dataset, small_config, ["eager"], steps=2 * gpu_step.BLOCK)
    eager = results["eager"]
    assert len(eager["blocks"]) == 2 and eager["step_s"] > 0
    assert min(eager["blocks"]) <= eager["step_s"] <= max(eager["blocks"])
    assert "floor" not in results  # CUDA only
    assert "not measured" in gpu_step.table(results)


def test_a_batch_larger_than_the_split_is_refused(synthetic_dataset, small_config):
    with pytest.raises(SystemExit, match="fewer than one batch"):
        gpu_step.measure(synthetic_dataset, small_config.replace(batch_size=10 ** 6), ["eager"],
                         steps=gpu_step.BLOCK)


def test_cli_refuses_graphs_on_cpu():
    with pytest.raises(SystemExit):
        gpu_step.main(["--device", "cpu", "--kinds", "graphs"])
