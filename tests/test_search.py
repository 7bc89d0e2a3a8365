"""The configurations of one job (estimator.perfmodel.search): valid, unique, fitting, and ranked."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from estimator.perfmodel import iteration as pm
from estimator.perfmodel.iteration import JobSpec, PerfConstants
from estimator.perfmodel.search import (
    MICRO_BATCHES,
    describe_layout,
    layouts,
    pipeline_degrees,
    ranked,
    tensor_degrees,
)


def job(**overrides: Any) -> JobSpec:
    """A 1.3B GPT on 16 A100s (two nodes), Megatron's layout t=2, p=2, d=4."""
    base: dict[str, Any] = {
        "gpu": "a100-80gb",
        "num_gpus": 16,
        "hidden_size": 2048,
        "attention_heads": 16,
        "num_layers": 24,
        "sequence_length": 2048,
        "global_batch": 64,
        "micro_batch": 2,
        "tensor_parallel": 2,
        "pipeline_parallel": 2,
        "data_parallel": 4,
    }
    return JobSpec(**{**base, **overrides})


@pytest.fixture(scope="module")
def a100() -> PerfConstants:
    return pm.load_constants("a100-80gb")


def same_job(a: JobSpec, b: JobSpec) -> bool:
    keep = ("gpu", "num_gpus", "hidden_size", "attention_heads", "num_layers", "sequence_length")
    more = ("global_batch", "vocab_size", "gpus_per_node", "internode_gbps_per_gpu")
    return all(getattr(a, name) == getattr(b, name) for name in (*keep, *more))


def test_layouts_are_valid_unique_and_of_the_same_job() -> None:
    spec = job()
    found = layouts(spec)
    assert len(found) == len(set(found)) > 100
    capacity = spec.gpu_spec.memory_total_bytes
    for candidate in found:
        assert same_job(candidate, spec)
        assert replace(candidate) == candidate  # JobSpec accepts it again
        assert pm.memory_bytes_per_gpu(candidate) <= capacity
        assert candidate.pipeline_interleaving == 1
        assert candidate.micro_batch in MICRO_BATCHES
        if candidate.tensor_parallel == 1:
            assert not candidate.sequence_parallel
        if candidate.data_parallel == 1:
            assert candidate.sharding == "none"


def test_the_space_has_every_knob() -> None:
    found = layouts(job())
    assert {c.tensor_parallel for c in found} == {1, 2, 4, 8, 16}
    assert {c.pipeline_parallel for c in found} == {1, 2, 4, 8}  # 16 does not divide 24 layers
    assert {c.recompute for c in found} == set(pm.RECOMPUTE_MODES)
    assert {c.sharding for c in found} == set(pm.SHARDING_MODES)
    assert {c.sequence_parallel for c in found} == {False, True}
    assert {c.micro_batch for c in found} == set(MICRO_BATCHES)


def test_degrees_follow_the_node_and_the_layers() -> None:
    big = job(num_gpus=512, data_parallel=128, global_batch=1024, micro_batch=1, attention_heads=32)
    assert tensor_degrees(big) == [1, 2, 4, 8, 16, 32]  # heads 32; 16 and 32 span nodes
    assert tensor_degrees(job(attention_heads=8, hidden_size=2048)) == [1, 2, 4, 8]
    assert pipeline_degrees(big, 8) == [1, 2, 4, 8]  # divisors of 24 that divide 64
    assert tensor_degrees(job(gpus_per_node=4)) == [1, 2, 4, 8, 16]


def test_the_given_spec_comes_first_even_outside_the_bounds() -> None:
    spec = job(micro_batch=4, pipeline_interleaving=3, pipeline_parallel=4, data_parallel=2)
    found = layouts(spec)
    assert found[0] == spec
    assert found.count(spec) == 1


def test_a_spec_that_does_not_fit_is_left_out() -> None:
    spec = job(
        hidden_size=8192,
        attention_heads=64,
        num_layers=80,
        tensor_parallel=1,
        pipeline_parallel=1,
        data_parallel=16,
        micro_batch=4,
    )
    assert pm.memory_bytes_per_gpu(spec) > spec.gpu_spec.memory_total_bytes
    found = layouts(spec)
    assert spec not in found
    assert found  # with model parallelism, sharding or recomputation it fits


def test_narrowing_the_space_to_fsdp() -> None:
    found = layouts(job(), tensor_parallel=(1,), pipeline_parallel=(1,), sharding=("zero2", "full"))
    rest = found[1:]  # the given Megatron spec first
    assert rest
    assert all(c.tensor_parallel == c.pipeline_parallel == 1 for c in rest)
    assert {c.sharding for c in rest} == {"zero2", "full"}


def test_flash_attention_drops_selective_recomputation() -> None:
    found = layouts(job(attention="flash"))
    assert {c.recompute for c in found} == {"none", "full"}
    assert all(c.attention == "flash" for c in found)


def test_ranked_is_sorted_and_holds_every_layout(a100: PerfConstants) -> None:
    spec = job()
    order = ranked(spec, a100)
    seconds = [t for _, t in order]
    assert seconds == sorted(seconds)
    assert {c for c, _ in order} == set(layouts(spec))
    best, fastest = order[0]
    assert fastest == pytest.approx(pm.iteration_seconds(best, a100))
    assert fastest <= pm.iteration_seconds(spec, a100)


def test_a_512_gpu_job_ranks_in_seconds() -> None:
    h100 = pm.load_constants("h100-sxm")
    spec = JobSpec(
        gpu="h100-sxm",
        num_gpus=512,
        hidden_size=12288,
        attention_heads=96,
        num_layers=96,
        sequence_length=2048,
        global_batch=1536,
        micro_batch=1,
        tensor_parallel=8,
        pipeline_parallel=8,
        data_parallel=8,
    )
    begin = time.perf_counter()
    order = ranked(spec, h100)
    assert time.perf_counter() - begin < 5.0  # about 0.3 s on one core
    assert len(order) > 500


def test_describe_layout_names_what_is_not_the_default() -> None:
    spec = job(sharding="zero1", sequence_parallel=True, pipeline_interleaving=3, num_layers=24)
    assert describe_layout(spec) == "t=2 p=2 d=4 b=2 v=3, zero1, sequence parallel"
    assert describe_layout(job(sharding="full")) == "t=2 p=2 d=4 b=2, full sharding"


def test_ranking_check_scores_the_top_picks_against_the_measured_best() -> None:
    import numpy as np
    import pandas as pd

    from estimator.perfmodel.calibration import GROUP_KEYS, MEASURED
    from estimator.perfmodel.ranking_check import ranking_check, study_picks

    def study(gpus: int, measured_ms: list[float]) -> pd.DataFrame:
        return pd.DataFrame({**dict.fromkeys(GROUP_KEYS, 1), "# GPUs": gpus, MEASURED: measured_ms})

    vtrain = pd.concat([study(2, [100.0, 110.0, 150.0, 200.0]), study(4, [100.0, 120.0])], ignore_index=True)
    # study 2: the model's pick is the measured 110 ms (+10 %), the best is its 2nd; study 4: found
    predicted = np.array([0.5, 0.4, 0.6, 0.7, 0.1, 0.2])
    picks = study_picks(vtrain, predicted)
    assert picks["top1_regret_percent"].tolist() == pytest.approx([10.0, 0.0])
    assert picks["top3_holds_best"].tolist() == [True, True]
    check = ranking_check(picks)
    assert (check.studies, check.larger_studies) == (2, 1)
    assert check.top1_regret_median_percent == pytest.approx(5.0)
    assert check.top1_is_best_ratio == 0.5


def test_candidates_keep_their_index_and_the_earlier_wins_a_tie(a100: PerfConstants) -> None:
    from estimator.perfmodel.search import rank_candidates

    fast = job(tensor_parallel=1, pipeline_parallel=1, data_parallel=16, micro_batch=4)
    order = rank_candidates([job(), fast, job()], lambda gpu: a100)
    assert [r.index for r in order] == [1, 0, 2]
    assert order[0].iteration_seconds == pytest.approx(pm.iteration_seconds(fast, a100))
