"""The performance model behind ``zest simulate``: formulas, refusals, telemetry and the calibration."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pandas.testing as pdt
import pytest

from collectors import gpuspecs, schema
from estimator.perfmodel import calibration
from estimator.perfmodel import iteration as pm
from estimator.perfmodel.iteration import JobSpec, PerfConstants, SpecError

REPO = Path(__file__).resolve().parent.parent
CONSTANTS_FILE = REPO / "models" / "perfmodel_constants.json"
START = pd.Timestamp("2025-03-01T12:00:00Z")


@pytest.fixture(scope="module")
def a100() -> PerfConstants:
    return pm.load_constants("a100-80gb", CONSTANTS_FILE)


@pytest.fixture(scope="module")
def h100() -> PerfConstants:
    return pm.load_constants("h100-sxm", CONSTANTS_FILE)


def job(**overrides: Any) -> dict[str, Any]:
    """A small GPT (h=1024, 24 layers) on 8 A100s, as a JSON-like mapping."""
    base: dict[str, Any] = {
        "gpu": "a100-80gb",
        "num_gpus": 8,
        "hidden_size": 1024,
        "attention_heads": 16,
        "num_layers": 24,
        "sequence_length": 1024,
        "global_batch": 32,
        "micro_batch": 2,
        "tensor_parallel": 2,
        "pipeline_parallel": 2,
        "data_parallel": 2,
    }
    return {**base, **overrides}


# --- the formulas ---------------------------------------------------------------------------------


def test_flops_match_narayanan_by_hand() -> None:
    spec = JobSpec(**job(global_batch=8, micro_batch=1, recompute="full"))
    # 96·B·s·l·h²·(1 + s/(6h) + V/(16lh)) with B=8, s=1024, l=24, h=1024, V=51200:
    # B·s·l·h² = 8·1024·24·1024² = 206,158,430,208; the bracket is 1 + 1/6 + 51200/393216 = 1.296875
    assert pm.model_flops_per_iteration(spec) == pytest.approx(96 * 206_158_430_208 * 1.296875, rel=1e-12)
    # the same from its parts: forward 24Bsh² + 4Bs²h per layer, logits 2BshV; fwd+bwd+recompute = 4
    # forward passes of the layers, 3 of the logits
    b_, s, h, v = 8, 1024, 1024, 51200
    layers = 24 * (24 * b_ * s * h**2 + 4 * b_ * s**2 * h)
    assert pm.model_flops_per_iteration(spec) == pytest.approx(4 * layers + 3 * 2 * b_ * s * h * v, rel=1e-12)
    without = replace(spec, recompute="none")
    assert pm.model_flops_per_iteration(without) == pytest.approx(
        3 * layers + 3 * 2 * b_ * s * h * v, rel=1e-12
    )


@pytest.mark.parametrize(
    ("tp", "sp", "recompute", "expected_bytes"),
    [
        # GPT-3 175B layer (s=2048, b=1, h=12288, a=96): 5as/h = 80, so sbh·(34 + 80) without parallelism
        (1, False, "none", 2_868_903_936),
        (8, False, "none", 578_813_952),  # sbh·(10 + 24/8 + 80/8)
        (8, True, "none", 358_612_992),  # sbh·114/8
        (8, True, "selective", 106_954_752),  # sbh·34/8
        (8, False, "full", 50_331_648),  # 2sbh: only the layer's input
    ],
)
def test_activation_memory_per_layer_follows_korthikanti(
    tp: int, sp: bool, recompute: str, expected_bytes: int
) -> None:
    spec = JobSpec(
        gpu="h100-sxm",
        num_gpus=8 * tp,
        hidden_size=12288,
        attention_heads=96,
        num_layers=96,
        sequence_length=2048,
        global_batch=8,
        micro_batch=1,
        tensor_parallel=tp,
        pipeline_parallel=8,
        data_parallel=1,
        recompute=recompute,
        sequence_parallel=sp,
    )
    assert pm.activation_bytes_per_layer(spec) == expected_bytes


def test_model_states_are_16_bytes_per_parameter_split_by_tp_and_pp() -> None:
    one = JobSpec(**job(num_gpus=1, tensor_parallel=1, pipeline_parallel=1, data_parallel=1, global_batch=2))
    total = pm.parameters_per_gpu(one)
    h, n_layers, v, s = 1024, 24, 51200, 1024
    assert total == pytest.approx(12 * n_layers * h**2 + 13 * n_layers * h + (v + s) * h)
    four = JobSpec(**job(num_gpus=4, tensor_parallel=2, pipeline_parallel=2, data_parallel=1, global_batch=2))
    layers_only = (12 * h**2 + 13 * h) * n_layers
    assert pm.parameters_per_gpu(four, stage=1) == pytest.approx(layers_only / 4 + v * h / 2)


def test_pipeline_bubble_is_p_minus_one_over_m(a100: PerfConstants) -> None:
    # a tiny vocabulary makes the stages equal, so the bubble is the textbook (p−1)/m of the busy time
    spec = JobSpec(**job(num_gpus=4, tensor_parallel=1, pipeline_parallel=4, data_parallel=1, vocab_size=128))
    m = spec.micro_batches

    def bubble_share(b: pm.IterationBreakdown) -> float:
        busy = b.compute_seconds + b.recompute_seconds + b.tp_comm_exposed_seconds + b.pp_comm_exposed_seconds
        return b.bubble_seconds / busy

    plain = pm.iteration(spec, a100)
    assert bubble_share(plain) == pytest.approx(3 / m, rel=0.03)
    assert max(plain.stage_busy_seconds) == pytest.approx(min(plain.stage_busy_seconds), rel=0.01)
    interleaved = pm.iteration(replace(spec, pipeline_interleaving=2), a100)
    assert bubble_share(interleaved) == pytest.approx(3 / (2 * m), rel=0.03)
    # without a pipeline there is no bubble
    flat = pm.iteration(JobSpec(**job(num_gpus=4, pipeline_parallel=1, data_parallel=2)), a100)
    assert flat.bubble_seconds == pytest.approx(0.0, abs=1e-12)


def test_breakdown_sums_to_total(a100: PerfConstants) -> None:
    b = pm.iteration(JobSpec(**job(recompute="selective", sequence_parallel=True)), a100)
    parts = (
        b.compute_seconds
        + b.recompute_seconds
        + b.bubble_seconds
        + b.tp_comm_exposed_seconds
        + b.pp_comm_exposed_seconds
        + b.dp_comm_exposed_seconds
        + b.optimizer_seconds
        + b.overhead_seconds
    )
    assert parts == pytest.approx(b.total_seconds, rel=1e-9)
    assert pm.iteration_seconds(JobSpec(**job(recompute="selective", sequence_parallel=True)), a100) == (
        b.total_seconds
    )
    assert 0 < b.mfu_ratio < 1
    assert b.fits and b.memory_capacity_bytes == gpuspecs.A100_80GB.memory_total_bytes


def test_more_tensor_parallelism_on_a_tiny_model_exposes_more_communication(a100: PerfConstants) -> None:
    tiny = {"hidden_size": 256, "attention_heads": 8, "num_layers": 4, "sequence_length": 512}
    shares = []
    for tp in (1, 2, 4, 8):
        spec = JobSpec(**job(**tiny, tensor_parallel=tp, pipeline_parallel=1, data_parallel=8 // tp))
        b = pm.iteration(spec, a100)
        shares.append(b.tp_comm_exposed_seconds / b.total_seconds)
    assert shares[0] == 0.0
    assert shares == sorted(shares) and shares[-1] > shares[1] > 0
    # exposed NCCL time keeps a kernel resident while few SMs work
    t8 = pm.iteration(JobSpec(**job(**tiny, tensor_parallel=8, pipeline_parallel=1, data_parallel=1)), a100)
    assert t8.gpu_util_ratio > t8.sm_active_ratio + 0.2


def test_full_recompute_adds_a_third_of_forward_and_backward(a100: PerfConstants) -> None:
    big = {"hidden_size": 4096, "attention_heads": 32, "num_layers": 16, "vocab_size": 128}
    none = pm.iteration(JobSpec(**job(**big)), a100)
    full = pm.iteration(JobSpec(**job(**big, recompute="full")), a100)
    assert none.recompute_seconds == 0.0
    assert full.compute_seconds == pytest.approx(none.compute_seconds, rel=1e-3)
    assert full.recompute_seconds / none.compute_seconds == pytest.approx(1 / 3, rel=0.02)
    selective = pm.iteration(JobSpec(**job(**big, recompute="selective")), a100)
    assert 0 < selective.recompute_seconds < 0.2 * full.recompute_seconds
    assert full.memory_bytes_per_gpu < selective.memory_bytes_per_gpu < none.memory_bytes_per_gpu


def test_small_micro_batches_use_the_tensor_cores_less(a100: PerfConstants) -> None:
    small = pm.iteration(JobSpec(**job(micro_batch=1)), a100)
    large = pm.iteration(JobSpec(**job(micro_batch=8)), a100)
    assert small.tensor_active_ratio < large.tensor_active_ratio
    assert small.total_seconds > large.total_seconds


# --- the spec and its refusals -------------------------------------------------------------------


def test_from_json_reads_a_file_and_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job(gpu="NVIDIA A100-SXM4-80GB", recompute="full")), encoding="utf-8")
    from_file = JobSpec.from_json(path)
    assert from_file == JobSpec.from_json(job(recompute="full"))
    assert from_file.gpu == "a100-80gb"
    assert from_file.micro_batches == 8 and from_file.layers_per_stage == 12


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_gpus": 16}, r"2·2·2 = 8 but num_gpus is 16"),
        ({"global_batch": 30}, r"global_batch 30 is not a multiple of micro_batch·data_parallel"),
        ({"attention_heads": 15}, r"hidden_size 1024 is not divisible by attention_heads 15"),
        (
            {"tensor_parallel": 4, "data_parallel": 1, "attention_heads": 2, "hidden_size": 1024},
            r"attention_heads 2",
        ),
        ({"num_layers": 25}, r"num_layers 25 is not divisible"),
        ({"recompute": "some"}, r"recompute: must be one of none, selective, full"),
        ({"micro_batch": 0}, r"micro_batch: must be a positive integer"),
        ({"micro_batch": 2.0}, r"micro_batch: must be a positive integer"),
        ({"sequence_parallel": "yes"}, r"sequence_parallel: must be true or false"),
        ({"gpu": "V100"}, r"unknown GPU 'V100'"),
        ({"gpu": 100}, r"gpu: must be a string"),
        ({"colour": "red"}, r"unknown field\(s\) colour"),
        ({"pipeline_interleaving": 2, "global_batch": 6, "micro_batch": 1}, r"multiple of pipeline_parallel"),
    ],
)
def test_from_json_refuses_bad_specs_in_one_line(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        JobSpec.from_json(job(**overrides))
    assert "\n" not in str(caught.value)


def test_from_json_refuses_missing_fields_and_unreadable_files(tmp_path: Path) -> None:
    incomplete = job()
    del incomplete["hidden_size"]
    with pytest.raises(SpecError, match="lacks field"):
        JobSpec.from_json(incomplete)
    with pytest.raises(SpecError, match="cannot read job spec"):
        JobSpec.from_json(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"gpu": "a100-80gb",\n oops}', encoding="utf-8")
    with pytest.raises(SpecError, match=r"not JSON: .* at line 2"):
        JobSpec.from_json(broken)
    with pytest.raises(SpecError, match="JSON object"):
        JobSpec.from_json([1, 2])  # type: ignore[arg-type]


def test_from_json_refuses_a_job_that_does_not_fit_and_says_by_how_much(a100: PerfConstants) -> None:
    # 7B-like model, pure data parallelism: 16 bytes per parameter alone exceed 80 GB
    too_big = job(
        hidden_size=4096,
        attention_heads=32,
        num_layers=32,
        sequence_length=2048,
        tensor_parallel=1,
        pipeline_parallel=1,
        data_parallel=8,
        global_batch=64,
        micro_batch=1,
    )
    with pytest.raises(
        SpecError, match=r"needs \d+\.\d GiB per GPU but a a100-80gb has 80\.0 GiB \(\d+\.\d GiB short\)"
    ):
        JobSpec.from_json(too_big)
    # built directly, the spec exists and the model says it does not fit
    b = pm.iteration(JobSpec(**too_big), a100)
    assert not b.fits and b.memory_bytes_per_gpu > b.memory_capacity_bytes
    with pytest.raises(SpecError, match="out-of-memory"):
        pm.simulate_telemetry(JobSpec(**too_big), a100, job_id="j", minutes=1, seed=0, start=START)
    # with tensor and pipeline parallelism the same model fits
    assert JobSpec.from_json({**too_big, "tensor_parallel": 4, "pipeline_parallel": 2, "data_parallel": 1})


def test_constants_must_match_the_gpu(a100: PerfConstants, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="constants are for a100-80gb but the job runs on h100-sxm"):
        pm.iteration(JobSpec(**job(gpu="h100-sxm")), a100)
    with pytest.raises(SpecError, match="cannot read perfmodel constants"):
        pm.load_constants("a100-80gb", tmp_path / "absent.json")
    with pytest.raises(SpecError, match="lack 'h200'"):
        PerfConstants.from_mapping({"constants": {}}, "NVIDIA H200")


def test_gpu_specs_map_nvml_names() -> None:
    assert gpuspecs.from_nvml_name("NVIDIA H100 80GB HBM3") is gpuspecs.H100_SXM
    assert gpuspecs.from_nvml_name("nvidia a100-sxm4-40gb") is gpuspecs.A100_40GB
    assert gpuspecs.from_nvml_name("Tesla V100-SXM2-16GB") is None
    assert gpuspecs.get("h200").nvml_name == "NVIDIA H200"
    assert gpuspecs.H100_SXM.peak_bf16_flops_per_second == pytest.approx(989.4e12)
    assert gpuspecs.A100_80GB.nvlink_bidirectional_bytes_per_second == pytest.approx(600e9)
    with pytest.raises(KeyError, match="unknown GPU"):
        gpuspecs.get("MI300X")


# --- telemetry -------------------------------------------------------------------------------------


def test_telemetry_is_a_canonical_frame_with_one_row_per_gpu_and_second(a100: PerfConstants) -> None:
    spec = JobSpec(**job(num_gpus=16, data_parallel=4, global_batch=64))
    frame = pm.simulate_telemetry(spec, a100, job_id="4242", minutes=2, seed=7, start=START)
    pdt.assert_frame_equal(frame, schema.conform(frame))
    assert len(frame) == 16 * 120
    assert not frame.duplicated([schema.TIMESTAMP, schema.HOST, schema.GPU]).any()
    assert frame.groupby([schema.HOST, schema.GPU]).size().eq(120).all()
    assert sorted(frame[schema.HOST].unique()) == ["node0", "node1"]
    assert set(frame[schema.GPU_MODEL]) == {"NVIDIA A100-SXM4-80GB"}
    assert set(frame[schema.JOB_ID]) == {"4242"}
    assert frame[schema.TIMESTAMP].min() == START
    for ratio in ("gpu_util_ratio", "sm_active_ratio", "tensor_active_ratio", "dram_active_ratio"):
        assert frame[ratio].between(0, 1).all()
    gpu = gpuspecs.A100_80GB
    assert frame["power_watts"].between(0.9 * gpu.idle_watts, gpu.tdp_watts).all()
    assert (frame["mem_total_bytes"] == gpu.memory_total_bytes).all()
    expected_memory = pm.memory_bytes_per_gpu(spec)
    assert frame["mem_used_bytes"].max() == pytest.approx(expected_memory, rel=0.02)
    assert frame["pcie_rx_bytes_per_second"].mean() < 0.01 * gpu.pcie_bytes_per_second
    assert frame["nvlink_bytes_per_second"].mean() > 0  # TP and DP traffic
    # the per-second samples average to what the model says for the job
    b = pm.iteration(spec, a100)
    assert frame["sm_active_ratio"].mean() == pytest.approx(b.sm_active_ratio, rel=0.05)
    assert frame["tensor_active_ratio"].mean() == pytest.approx(b.tensor_active_ratio, rel=0.05)


def test_telemetry_is_deterministic_for_a_seed(a100: PerfConstants) -> None:
    spec = JobSpec(**job())
    first = pm.simulate_telemetry(spec, a100, job_id="1", minutes=1, seed=3, start=START)
    again = pm.simulate_telemetry(spec, a100, job_id="1", minutes=1, seed=3, start=START)
    other = pm.simulate_telemetry(spec, a100, job_id="1", minutes=1, seed=4, start=START)
    pdt.assert_frame_equal(first, again)
    assert not first["sm_active_ratio"].equals(other["sm_active_ratio"])


def test_pipeline_stages_differ_so_the_waiting_stage_shows(a100: PerfConstants) -> None:
    # h=1024 with four stages of 6 layers: the logit layer makes the last stage the straggler
    spec = JobSpec(**job(tensor_parallel=1, pipeline_parallel=4, data_parallel=2))
    frame = pm.simulate_telemetry(spec, a100, job_id="pp", minutes=1, seed=0, start=START)
    ranks_per_stage = spec.tensor_parallel * spec.data_parallel
    stage = frame[schema.GPU].astype(int) // ranks_per_stage
    per_stage = frame.groupby(stage)["sm_active_ratio"].mean()
    assert per_stage[3] > per_stage[0] + 0.05
    assert per_stage[1] == pytest.approx(per_stage[2], abs=0.03)


def test_short_iterations_read_smooth_and_long_ones_oscillate(
    a100: PerfConstants, h100: PerfConstants
) -> None:
    short = JobSpec(**job())
    # GPT-3 175B on 64 H100s with only 2 micro-batches per iteration: seconds-long pipeline bubbles
    long = JobSpec(
        gpu="h100-sxm",
        num_gpus=64,
        hidden_size=12288,
        attention_heads=96,
        num_layers=96,
        sequence_length=2048,
        global_batch=32,
        micro_batch=16,
        tensor_parallel=8,
        pipeline_parallel=8,
        data_parallel=1,
        recompute="full",
        sequence_parallel=True,
    )
    assert pm.iteration_seconds(short, a100) < 1 < 5 < pm.iteration_seconds(long, h100)
    smooth = pm.simulate_telemetry(short, a100, job_id="s", minutes=2, seed=1, start=START)
    wavy = pm.simulate_telemetry(long, h100, job_id="l", minutes=2, seed=1, start=START)

    def spread(frame: pd.DataFrame) -> float:
        first_gpu = frame[(frame[schema.HOST] == "node0") & (frame[schema.GPU] == "0")]
        return float(first_gpu["sm_active_ratio"].std())

    assert spread(smooth) < 0.05
    assert spread(wavy) > 0.15
    assert wavy.groupby(schema.TIMESTAMP)["sm_active_ratio"].mean().min() < 0.1  # whole-job bubble seconds


# --- calibration -----------------------------------------------------------------------------------


VTRAIN = REPO.parent / "shared" / "data" / "vtrain"


def test_constants_file_holds_every_gpu_and_says_which_are_derived() -> None:
    document = json.loads(CONSTANTS_FILE.read_text(encoding="utf-8"))
    assert set(document["constants"]) == set(gpuspecs.gpu_keys())
    assert document["fitted_gpus"] == list(calibration.FITTED_GPUS) == ["a100-80gb", "h100-sxm"]
    assert document["derived_gpus"] == {"a100-40gb": "a100-80gb", "h200": "h100-sxm"}
    assert "derived" in document["about"]
    held_out = document["held_out"]
    assert {r["gpu"] for r in held_out["by_gpu"]} == {"a100-40gb", "a100-80gb", "h100-sxm"}
    assert sum(r["rows"] for r in held_out["by_num_gpus"]) == sum(r["rows"] for r in document["fit"]["rows"])
    assert 0 < held_out["vtrain"]["mape_percent"] < 15
    names = {f.name for f in fields(PerfConstants)} - {"gpu"}
    for entry in document["constants"].values():
        assert set(entry) == names and all(math.isfinite(v) for v in entry.values())


def test_calibrated_constants_reproduce_the_recorded_fit(a100: PerfConstants) -> None:
    calibrate = calibration
    if not (VTRAIN / calibrate.DATA_FILE).is_file():
        pytest.skip(f"measured data not at {VTRAIN}")
    frame = calibrate.read_measurements(VTRAIN)
    scores = calibrate.score(frame, calibrate.predict_seconds(calibrate.specs_of(frame), a100))
    recorded = json.loads(CONSTANTS_FILE.read_text(encoding="utf-8"))["fit"]["in_sample"]
    print(
        f"\nperfmodel on vTrain (A100): MAPE {scores.mape_percent:.2f}%, Spearman within groups median "
        f"{scores.spearman_median:.3f} (IQR {scores.spearman_q25:.3f}-{scores.spearman_q75:.3f}, "
        f"{scores.groups_scored} groups), best configuration found in "
        f"{100 * scores.best_config_agreement_ratio:.0f}% of groups"
    )
    assert scores.mape_percent == pytest.approx(recorded["mape_percent"], rel=1e-3)
    assert scores.spearman_median == pytest.approx(recorded["spearman_median"], abs=1e-3)
    assert scores.mape_percent < 15
    assert scores.spearman_median > 0.6
    assert scores.spearman_q25 > 0.5


def test_derived_constants_scale_with_machine_balance(a100: PerfConstants, h100: PerfConstants) -> None:
    calibrate = calibration
    assert calibrate.derived_from(gpuspecs.H200_SXM) == "h100-sxm"
    assert calibrate.derived_from(gpuspecs.A100_40GB) == "a100-80gb"
    for source, target in ((h100, gpuspecs.H200_SXM), (a100, gpuspecs.A100_40GB)):
        derived = calibrate.derive(source, target)
        shipped = pm.load_constants(target.key, CONSTANTS_FILE)
        assert derived.matmul_half_size_elements == pytest.approx(shipped.matmul_half_size_elements, rel=1e-5)
        assert derived.layer_host_seconds == source.layer_host_seconds


def test_h100_is_faster_than_a100_on_compute_bound_jobs(a100: PerfConstants, h100: PerfConstants) -> None:
    # on a compute-bound job the H100 is faster, by less than its 3.2x peak ratio ...
    spec = JobSpec(**job(hidden_size=4096, attention_heads=32, num_layers=16, micro_batch=4))
    ratio = pm.iteration_seconds(spec, a100) / pm.iteration_seconds(replace(spec, gpu="h100-sxm"), h100)
    assert 1.5 < ratio < 3.2
    # ... while a small model is bound by its host, which a faster GPU does not help
    small = JobSpec(**job())
    ratio = pm.iteration_seconds(small, a100) / pm.iteration_seconds(replace(small, gpu="h100-sxm"), h100)
    assert 1.0 <= ratio < 1.3


# --- zest simulate --predict ----------------------------------------------------------------------


def test_simulate_predict_prints_the_models_prediction_and_writes_nothing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from estimator.cli.model import simulate

    spec_path = REPO / "collectors" / "examples" / "gpt-1.3b-a100-tp4.json"
    result = CliRunner().invoke(simulate, ["--spec", str(spec_path), "--predict"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.output)
    spec = pm.JobSpec.from_json(spec_path)
    constants = pm.load_constants(spec.gpu)
    assert predicted["iteration_seconds"] == pytest.approx(pm.iteration_seconds(spec, constants), rel=1e-12)
    tokens = spec.global_batch * spec.sequence_length / predicted["iteration_seconds"]
    assert predicted["tokens_per_second"] == pytest.approx(tokens, rel=1e-12)
    assert 0 < predicted["mfu"] < 1 and predicted["fits"] is True
    assert 0 < predicted["memory_gib_per_gpu"] <= predicted["memory_capacity_gib"] == 80.0
    parts = predicted["iteration_breakdown_seconds"]
    assert sum(parts.values()) == pytest.approx(predicted["iteration_seconds"], rel=0.05)
    assert "not measured" in predicted["source"]
    assert list(tmp_path.iterdir()) == []
    refused = CliRunner().invoke(simulate, ["--spec", str(spec_path), "--predict", "--output", "x.parquet"])
    assert refused.exit_code == 2 and "writes no capture" in refused.output


# --- beyond one node: sharding, multi-node, Hopper (issue 12) -------------------------------------

BASELINE = REPO / "tests" / "data" / "perfmodel_baseline.json"
NEW_SPECS = sorted(p for p in (REPO / "tests" / "data").glob("perfmodel_*.json") if p.name != BASELINE.name)


def _frame_digest(frame: pd.DataFrame) -> str:
    import hashlib

    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()).hexdigest()


def _baseline_iteration(spec: JobSpec, c: PerfConstants) -> dict[str, Any]:
    from dataclasses import asdict

    got = asdict(pm.iteration(spec, c))
    got["stage_busy_seconds"] = list(got["stage_busy_seconds"])
    got["memory_bytes_per_stage"] = [pm.memory_bytes_per_gpu(spec, i) for i in range(spec.pipeline_parallel)]
    got["parameters_per_stage"] = [pm.parameters_per_gpu(spec, i) for i in range(spec.pipeline_parallel)]
    return got


def _baseline_telemetry(spec: JobSpec, c: PerfConstants, seed: int) -> str:
    frame = pm.simulate_telemetry(spec, c, job_id="base", minutes=1, seed=seed, start=START)
    return _frame_digest(frame)


def test_specs_of_before_sharding_and_nodes_keep_their_exact_predictions() -> None:
    # The Z_e model is trained on telemetry simulated for such specs: no bit may change unless the
    # constants are refitted (then the baseline is regenerated: python tests/test_perfmodel.py).
    cases = json.loads(BASELINE.read_text(encoding="utf-8"))["cases"]
    assert len(cases) > 200
    assert not any("attention" in case["spec"] for case in cases)  # the specs predate the key
    constants = {key: pm.load_constants(key, CONSTANTS_FILE) for key in gpuspecs.gpu_keys()}
    for case in cases:
        spec = JobSpec(**case["spec"])
        c = constants[spec.gpu]
        assert _baseline_iteration(spec, c) == case["iteration"], case["spec"]
        if "telemetry_sha256" in case:
            assert _baseline_telemetry(spec, c, case["telemetry_seed"]) == case["telemetry_sha256"], case[
                "spec"
            ]


def regenerate_baseline() -> None:
    """Rewrite the baseline's predictions for its specs under the shipped constants (after a refit)."""
    document = json.loads(BASELINE.read_text(encoding="utf-8"))
    constants = {key: pm.load_constants(key, CONSTANTS_FILE) for key in gpuspecs.gpu_keys()}
    for case in document["cases"]:
        spec = JobSpec(**case["spec"])
        c = constants[spec.gpu]
        case["iteration"] = _baseline_iteration(spec, c)
        if "telemetry_sha256" in case:
            case["telemetry_sha256"] = _baseline_telemetry(spec, c, case["telemetry_seed"])
    document["about"] = BASELINE_ABOUT
    lines = ",\n".join(json.dumps(case, separators=(",", ":")) for case in document["cases"])
    about = json.dumps(document["about"])
    BASELINE.write_text(f'{{"about":{about},\n"cases":[\n{lines}\n]}}\n', encoding="utf-8")


BASELINE_ABOUT = (
    "iteration() and simulate_telemetry() of zest's performance model for specs written before the "
    "sharding, multi-node and attention keys (specs from commit 5569097; predictions regenerated by "
    "python tests/test_perfmodel.py after the constants were refitted on vTrain, llm-foundry and "
    "torchtitan); tests/test_perfmodel.py checks they stay bit-identical. telemetry_sha256: sha256 of "
    "pandas.util.hash_pandas_object(frame, index=True) of 1 minute at the seed."
)


def test_sharding_divides_the_states_by_data_parallelism_by_hand() -> None:
    spec = JobSpec(**job(tensor_parallel=1, pipeline_parallel=1, data_parallel=8, micro_batch=1))
    params, d, h = pm.parameters_per_gpu(spec), 8, 1024
    none = pm.memory_bytes_per_gpu(spec)
    runtime_and_activations = none - 16 * params
    for sharding, states in (
        ("zero1", 4 * params + 12 * params / d),
        ("zero2", 2 * params + 14 * params / d),
        ("full", 16 * params / d + 2 * (12 * h**2 + 13 * h) * 4),
    ):
        sharded = replace(spec, sharding=sharding)
        assert pm.memory_bytes_per_gpu(sharded) == pytest.approx(states + runtime_and_activations, rel=1e-12)
    memories = [pm.memory_bytes_per_gpu(replace(spec, sharding=s)) for s in pm.SHARDING_MODES]
    assert memories == sorted(memories, reverse=True)


def test_sharding_moves_the_same_bytes_as_an_all_reduce_and_full_half_again(a100: PerfConstants) -> None:
    spec = JobSpec(**job(tensor_parallel=1, pipeline_parallel=1, data_parallel=8))
    dp = {s: pm.iteration(replace(spec, sharding=s), a100).dp_comm_exposed_seconds for s in pm.SHARDING_MODES}
    assert dp["zero1"] == dp["zero2"] == dp["none"] > 0
    assert dp["full"] == pytest.approx(1.5 * dp["none"], rel=1e-12)
    # each replica steps only its shard of the optimizer states
    opt = {s: pm.iteration(replace(spec, sharding=s), a100).optimizer_seconds for s in ("none", "zero1")}
    assert opt["zero1"] == pytest.approx(opt["none"] / 8, rel=1e-12)


def test_data_parallelism_across_nodes_is_hierarchical_by_hand(a100: PerfConstants) -> None:
    spec = JobSpec(
        **job(num_gpus=16, tensor_parallel=1, pipeline_parallel=1, data_parallel=16, micro_batch=1)
    )
    c = a100
    params = pm.parameters_per_gpu(spec)
    nvlink = gpuspecs.A100_80GB.nvlink_bytes_per_second * c.comm_efficiency
    network = gpuspecs.A100_80GB.network_bytes_per_second * c.comm_efficiency
    g, nodes = 8, 2
    expected = (
        2 * (g - 1) / g * params * 2 / nvlink
        + 2 * (nodes - 1) / nodes * params * 2 / g / network
        + 2 * (g - 1 + nodes - 1) * c.collective_latency_seconds
    )
    b = pm.iteration(spec, c)
    assert b.dp_comm_exposed_seconds == pytest.approx(expected, rel=1e-12)
    # a faster network helps; a flat ring at the network's rate would be far slower
    fast = pm.iteration(replace(spec, internode_gbps_per_gpu=800), c)
    assert fast.dp_comm_exposed_seconds < b.dp_comm_exposed_seconds
    flat = 2 * 15 / 16 * params * 2 / network
    assert b.dp_comm_exposed_seconds < 0.5 * flat
    # 4 GPUs per node: the same job spans 4 nodes and its hosts are named so
    four = replace(spec, gpus_per_node=4)
    assert pm.iteration(four, c).dp_comm_exposed_seconds > b.dp_comm_exposed_seconds
    frame = pm.simulate_telemetry(four, c, job_id="n4", minutes=1, seed=0, start=START)
    assert sorted(frame[schema.HOST].unique()) == ["node0", "node1", "node2", "node3"]
    assert sorted(frame[schema.GPU].unique()) == ["0", "1", "2", "3"]


def test_tensor_parallelism_across_nodes_is_allowed_and_slow(h100: PerfConstants) -> None:
    spec = JobSpec(
        **job(gpu="h100-sxm", num_gpus=16, tensor_parallel=16, pipeline_parallel=1, data_parallel=1)
    )
    inside = JobSpec(
        **job(gpu="h100-sxm", num_gpus=16, tensor_parallel=8, pipeline_parallel=1, data_parallel=2)
    )
    across = pm.iteration(spec, h100)
    assert across.tp_comm_exposed_seconds > 2 * pm.iteration(inside, h100).tp_comm_exposed_seconds
    with pytest.raises(SpecError, match=r"tensor_parallel 3 must divide the 8 GPUs of a node"):
        JobSpec(
            **job(
                num_gpus=12,
                tensor_parallel=3,
                pipeline_parallel=1,
                data_parallel=4,
                hidden_size=768,
                attention_heads=12,
            )
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sharding": "fsdp"}, r"sharding: must be one of none, zero1, zero2, full, got 'fsdp'"),
        ({"sharding": 3}, r"sharding: must be one of none, zero1, zero2, full"),
        ({"gpus_per_node": 0}, r"gpus_per_node: must be a positive integer"),
        ({"gpus_per_node": True}, r"gpus_per_node: must be a positive integer"),
        ({"internode_gbps_per_gpu": -1}, r"internode_gbps_per_gpu: must be a positive number"),
        ({"internode_gbps_per_gpu": "fast"}, r"internode_gbps_per_gpu: must be a positive number"),
    ],
)
def test_from_json_refuses_bad_sharding_and_node_keys(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        JobSpec.from_json(job(**overrides))
    assert "\n" not in str(caught.value)


def _predict(path: Path) -> dict[str, Any]:
    from click.testing import CliRunner

    from estimator.cli.model import simulate

    result = CliRunner().invoke(simulate, ["--spec", str(path), "--predict"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    predicted: dict[str, Any] = json.loads(result.output)
    return predicted


@pytest.mark.parametrize("path", NEW_SPECS, ids=[p.stem for p in NEW_SPECS])
def test_simulate_predict_on_fsdp_multi_node_and_hopper_specs(path: Path) -> None:
    predicted = _predict(path)
    spec = JobSpec.from_json(path)
    tokens = spec.global_batch * spec.sequence_length / predicted["iteration_seconds"]
    assert predicted["tokens_per_second"] == pytest.approx(tokens, rel=1e-12)
    assert predicted["fits"] is True
    assert 0 < predicted["memory_gib_per_gpu"] < predicted["memory_capacity_gib"]
    assert 0 < predicted["mfu"] < 1
    for key in ("iteration_seconds", "tokens_per_second", "mfu", "memory_gib_per_gpu"):
        assert math.isfinite(predicted[key]) and predicted[key] > 0, key
    parts = predicted["iteration_breakdown_seconds"]
    assert sum(parts.values()) == pytest.approx(predicted["iteration_seconds"], rel=1e-9)


def test_simulate_predict_compares_sharding_and_layouts_across_nodes() -> None:
    from estimator.cli.model import prediction_document

    data = REPO / "tests" / "data"
    assert {p.name for p in NEW_SPECS} >= {
        "perfmodel_fsdp_7b_h100.json",
        "perfmodel_tp16_h100_2node.json",
        "perfmodel_tp8_dp2_h100_2node.json",
    }
    fsdp = JobSpec.from_json(data / "perfmodel_fsdp_7b_h100.json")
    assert fsdp.sharding == "full"
    constants = pm.load_constants(fsdp.gpu)
    full = _predict(data / "perfmodel_fsdp_7b_h100.json")
    replicated = prediction_document(replace(fsdp, sharding="none"), constants)
    assert full["memory_gib_per_gpu"] < replicated["memory_gib_per_gpu"]
    assert replicated["fits"] is False  # the same 7B job needs sharding to fit on 8 H100s
    tp16 = _predict(data / "perfmodel_tp16_h100_2node.json")
    tp8_dp2 = _predict(data / "perfmodel_tp8_dp2_h100_2node.json")
    assert tp16["num_gpus"] == tp8_dp2["num_gpus"] == 16
    assert tp16["iteration_seconds"] > tp8_dp2["iteration_seconds"]
    assert tp16["tokens_per_second"] < tp8_dp2["tokens_per_second"]


SHARED_DATA = REPO.parent / "shared" / "data"


# --- attention: standard (scores in HBM) or flash (fused) ------------------------------------------


def test_flash_attention_stores_no_scores_and_recomputes_qk_in_backward() -> None:
    spec = JobSpec(**job(sequence_length=4096, global_batch=8, micro_batch=1))
    flash = replace(spec, attention="flash")
    assert spec.attention == "standard"
    # Korthikanti's 5as/h term goes; what is left is selective recomputation's count
    assert pm.activation_bytes_per_layer(flash) == pm.activation_bytes_per_layer(spec, "selective")
    # the backward pass recomputes QKᵀ: 2·B·s²·h FLOPs per layer more
    b_, s, h, n_layers = 8, 4096, 1024, 24
    extra = pm.model_flops_per_iteration(flash) - pm.model_flops_per_iteration(spec)
    assert extra == pytest.approx(2 * b_ * s**2 * h * n_layers, rel=1e-12)
    # with the scores never stored, selective recomputation is already done
    assert pm.model_flops_per_iteration(
        replace(flash, recompute="selective")
    ) == pm.model_flops_per_iteration(flash)
    assert pm.activation_bytes_per_layer(replace(flash, recompute="full")) == pm.activation_bytes_per_layer(
        replace(spec, recompute="full")
    )


@pytest.mark.parametrize("gpu", ["a100-80gb", "h100-sxm"])
def test_flash_attention_needs_less_memory_and_time_on_long_sequences(gpu: str) -> None:
    constants = pm.load_constants(gpu, CONSTANTS_FILE)
    for seq in (4096, 16384):
        spec = JobSpec(**job(gpu=gpu, sequence_length=seq, global_batch=8, micro_batch=1, attention_heads=16))
        flash = replace(spec, attention="flash")
        standard_b, flash_b = pm.iteration(spec, constants), pm.iteration(flash, constants)
        assert flash_b.memory_bytes_per_gpu < standard_b.memory_bytes_per_gpu
        assert flash_b.total_seconds < standard_b.total_seconds
        # MFU counts the model's FLOPs, not FlashAttention's recomputation
        assert flash_b.mfu_ratio == pytest.approx(
            standard_b.mfu_ratio * standard_b.total_seconds / flash_b.total_seconds, rel=1e-12
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fused", r"attention: must be one of standard, flash, got 'fused'"),
        (1, r"attention: must be one of standard, flash, got 1"),
        (None, r"attention: must be one of standard, flash, got None"),
    ],
)
def test_from_json_refuses_bad_attention_in_one_line(value: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        JobSpec.from_json(job(attention=value))
    assert "\n" not in str(caught.value)
    assert JobSpec.from_json(job(attention="flash")).attention == "flash"


def test_attention_flows_through_simulate_predict() -> None:
    from estimator.cli.model import prediction_document

    path = REPO / "tests" / "data" / "perfmodel_flash_8b_h200_2node.json"
    spec = JobSpec.from_json(path)
    assert spec.attention == "flash" and spec.gpu == "h200" and spec.num_gpus == 16
    predicted = _predict(path)
    assert predicted["fits"] is True
    standard = prediction_document(replace(spec, attention="standard"), pm.load_constants(spec.gpu))
    assert standard["fits"] is False  # 8,192 tokens: the scores alone would not fit
    assert predicted["memory_gib_per_gpu"] < standard["memory_gib_per_gpu"]
    assert predicted["iteration_seconds"] < standard["iteration_seconds"]


def test_mpt_and_llama_rows_use_flash_attention_and_all_mpt_rows_fit() -> None:
    if not all((SHARED_DATA / f).is_file() for f in calibration.HELD_OUT_FILES.values()):
        pytest.skip(f"held-out tables not under {SHARED_DATA}")
    frame = pd.read_csv(SHARED_DATA / calibration.HELD_OUT_FILES["llm-foundry"])
    specs = [spec for spec, _ in calibration.mpt_job_specs(frame) if spec is not None]
    assert len(specs) == 162 and {s.attention for s in specs} == {"flash"}
    # with the scores stored, 77 of them did not fit in the model's memory estimate
    assert all(pm.memory_bytes_per_gpu(s) <= s.gpu_spec.memory_total_bytes for s in specs)
    data = calibration.calibration_set(VTRAIN, SHARED_DATA)
    assert list(data.frame.columns) == list(calibration.CALIBRATION_COLUMNS)
    assert {s.attention for s in data.specs if s.gpu == "h100-sxm"} == {"flash"}
    counts = data.frame.groupby("study").size().to_dict()
    assert counts == {"llm-foundry": 162, "torchtitan": 6, "vtrain": 1103}


def test_grouped_cross_validation_holds_out_models_and_covers_every_gpu_type() -> None:
    if not all((SHARED_DATA / f).is_file() for f in calibration.HELD_OUT_FILES.values()):
        pytest.skip(f"held-out tables not under {SHARED_DATA}")
    full = calibration.calibration_set(VTRAIN, SHARED_DATA)
    # a small slice, fitted briefly: every 25th vTrain row and every throughput row
    keep = [i for i, study in enumerate(full.frame["study"]) if study != "vtrain" or i % 25 == 0]
    data = calibration.CalibrationSet(
        full.frame.iloc[keep].reset_index(drop=True),
        tuple(full.specs[i] for i in keep),
        full.not_expressed,
        full.sha256,
    )
    cv = calibration.grouped_cross_validation(data, folds=2, max_evaluations=3)
    assert len(cv) == len(data.frame) and cv["predicted_seconds"].gt(0).all()
    # no model shape is in two folds of one fitted GPU's rows
    assert (cv.groupby(["gpu", "shape"])["fold"].nunique() == 1).all()
    by_gpu = calibration.error_table(cv, ["gpu"])
    assert set(by_gpu["gpu"]) == set(data.frame["gpu"]) == {"a100-40gb", "a100-80gb", "h100-sxm"}
    assert list(by_gpu.columns) == ["gpu", "rows", "mape_percent", "median_error_percent"]
    by_count = calibration.error_table(cv, ["num_gpus"])
    assert by_count["rows"].sum() == len(cv)
    # the same in two processes: each fit is deterministic
    again = calibration.grouped_cross_validation(data, folds=2, processes=2, max_evaluations=3)
    pdt.assert_frame_equal(again, cv)


def test_shape_folds_deal_models_by_size() -> None:
    shapes = pd.Series(["h1024-l12", "h2048-l24", "h1024-l12", "h4096-l32", "h1024-l24"])
    assert calibration.shape_folds(shapes, 2).tolist() == [0, 0, 0, 1, 1]


def test_held_out_error_on_llm_foundry_and_torchtitan_is_computed_not_fitted() -> None:
    if not all((SHARED_DATA / f).is_file() for f in calibration.HELD_OUT_FILES.values()):
        pytest.skip(f"held-out tables not under {SHARED_DATA}")
    before = CONSTANTS_FILE.read_bytes()
    predictions = calibration.held_out_predictions(SHARED_DATA, CONSTANTS_FILE)
    assert list(predictions.columns) == list(calibration.HELD_OUT_COLUMNS)
    expressed = predictions.dropna(subset=["predicted_tokens_per_second"])
    assert (expressed["predicted_tokens_per_second"] > 0).all()
    assert set(expressed["study"]) == {"llm-foundry", "torchtitan"}
    # FP8/Float8 and asynchronous TP rows are named, not predicted
    notes = set(predictions.loc[predictions["predicted_tokens_per_second"].isna(), "note"])
    assert any("FP8" in n or "Float8" in n for n in notes)
    summary = calibration.held_out_summary(predictions)
    assert summary["by_gpu"]["rows"].sum() == len(expressed)
    assert summary["spearman"]["spearman"].between(-1, 1).all() and len(summary["spearman"]) > 5
    text = calibration.held_out_markdown(summary)
    assert "by GPU count" in text and "rows not expressed" in text
    assert CONSTANTS_FILE.read_bytes() == before


if __name__ == "__main__":
    regenerate_baseline()
    print(f"wrote {BASELINE}")
