"""Simulated tuning studies (estimator.training.simulated): the jobs drawn, the labels and the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from estimator.features.extract import FEATURES
from estimator.perfmodel import iteration as pm
from estimator.perfmodel.iteration import PerfConstants
from estimator.perfmodel.search import layouts
from estimator.training import simulated as sim
from estimator.training.rows import (
    FAMILY,
    FSDP,
    GPU_MODEL,
    LABEL_SOURCE,
    MEGATRON,
    NUM_GPUS,
    SEQUENCE_LENGTH,
    SET,
    STUDY,
    Z_PERCENT,
)

# Seed 2's first 8 studies (71 rows, about 8 s) hold all four GPU types, both families, one node and several.
SEED = 2
COUNT = 8


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return sim.simulated_studies(COUNT, seed=SEED)


@pytest.fixture(scope="module")
def constants() -> dict[str, PerfConstants]:
    return {gpu: pm.load_constants(gpu) for gpu in sim.GPU_WEIGHTS}


def test_columns_and_types(rows: pd.DataFrame) -> None:
    assert list(rows.columns) == list(sim.COLUMNS)
    assert list(rows.columns[: len(FEATURES)]) == list(FEATURES)
    assert all(rows[name].dtype == np.float64 for name in FEATURES)
    assert rows[STUDY].dtype == np.int64
    assert sorted(rows[STUDY].unique()) == list(range(COUNT))
    assert (rows[LABEL_SOURCE] == "simulated").all()
    assert rows.index.equals(pd.RangeIndex(len(rows)))
    assert (rows[NUM_GPUS] == rows["gpus"]).all()  # the descriptive count is the telemetry's


def test_labels_are_within_study_gains(rows: pd.DataFrame) -> None:
    z = rows[Z_PERCENT]
    assert ((z >= 0) & (z < 100)).all()
    assert (rows.groupby(STUDY)[Z_PERCENT].min() == 0).all()  # each study's best
    sizes = rows.groupby(STUDY).size()
    assert sizes.between(*sim.CONFIGURATIONS_RANGE).all()
    # one job per study
    per_study = rows.groupby(STUDY)[[GPU_MODEL, NUM_GPUS, SEQUENCE_LENGTH, FAMILY]].nunique()
    assert (per_study == 1).all().all()


def test_covers_gpus_families_and_nodes(rows: pd.DataFrame) -> None:
    assert set(rows[GPU_MODEL]) == {"a100-40gb", "a100-80gb", "h100-sxm", "h200"}
    assert set(rows[FAMILY]) == {MEGATRON, FSDP}
    assert set(rows[SET]) == {sim.ONE_NODE, sim.SEVERAL_NODES}
    several = rows[SET] == sim.SEVERAL_NODES
    assert (rows.loc[several, "hosts"] > 1).all()
    assert (rows.loc[~several, "hosts"] == 1).all()


def test_deterministic_and_independent_of_the_count(rows: pd.DataFrame) -> None:
    first = rows[rows[STUDY] < 2].reset_index(drop=True)
    pdt.assert_frame_equal(sim.simulated_studies(2, seed=SEED), first)
    pdt.assert_frame_equal(sim.simulated_studies(2, seed=SEED, workers=2), first)
    other = sim.simulated_studies(1, seed=SEED + 1)
    assert not other[list(FEATURES)].equals(first.loc[: len(other) - 1, list(FEATURES)])


def test_labels_come_from_the_performance_model(
    rows: pd.DataFrame, constants: dict[str, PerfConstants]
) -> None:
    study = sim.draw_study(np.random.default_rng([SEED, 0]), constants)
    seconds = np.array([pm.iteration_seconds(c, constants[c.gpu]) for c in study.configurations])
    expected = 100.0 * (1.0 - seconds.min() / seconds)
    np.testing.assert_allclose(rows.loc[rows[STUDY] == 0, Z_PERCENT].to_numpy(), expected)


def test_studies_are_configurations_of_one_job_in_the_family(constants: dict[str, PerfConstants]) -> None:
    counts = []
    for i in range(60):
        study = sim.draw_study(np.random.default_rng([7, i]), constants)
        configurations = study.configurations
        counts.append(len(configurations))
        assert len(set(configurations)) == len(configurations)
        start = configurations[0]
        space = set(layouts(start, **sim.FAMILIES[study.family]))
        assert set(configurations) <= space
        assert all(pm.memory_bytes_per_gpu(c) <= c.gpu_spec.memory_total_bytes for c in configurations)
        if study.family == FSDP:
            assert all(c.tensor_parallel == c.pipeline_parallel == 1 for c in configurations)
            assert all(c.sharding in ("zero2", "full") or c.data_parallel == 1 for c in configurations)
        else:
            assert all(c.sharding in ("none", "zero1") for c in configurations)
        assert start.micro_batch <= 4
        assert start.tensor_parallel <= start.node_gpus
    assert 6 <= np.median(counts) <= 12
