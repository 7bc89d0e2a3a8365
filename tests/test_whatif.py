"""``zest whatif``: the job's configurations ranked, a candidates file ranked, a Megatron command line read,
the Optuna warm start taken by a real Optuna study, and a Slurm job's batch script read from a real Slurm."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from slurmcluster import SlurmCluster

from estimator.cli.main import main
from estimator.perfmodel import iteration as pm
from estimator.perfmodel.iteration import JobSpec, SpecError
from estimator.perfmodel.megatron_args import megatron_options, spec_from_command_line
from estimator.perfmodel.search import INTERLEAVINGS, held_out_error, layouts, search_ranked
from estimator.reports.whatif import OPTUNA_PARAMS

JOB: dict[str, Any] = {
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

#: The same job as JOB, as a Megatron-LM launch script would start it (two nodes of 8).
LAUNCH = """#!/bin/bash
#SBATCH --nodes=2
TP=2
export PP=2
GPT_ARGS="--num-layers 24 --hidden-size 2048 --num-attention-heads 16"
torchrun --nproc_per_node=8 --nnodes 2 pretrain_gpt.py \\
    --tensor-model-parallel-size $TP --pipeline-model-parallel-size ${PP} \\
    $GPT_ARGS \\
    --seq-length 2048 --micro-batch-size 2 --global-batch-size 64  # a comment
"""

#: JSON outputs carry 6 significant digits (estimator.reports.table.JSON_DIGITS)
JSON_REL = 1e-5


def whatif(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``zest whatif ARGS`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(["whatif", *args])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    assert isinstance(code, int)
    return code, out, err


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(JOB), encoding="utf-8")
    return path


def test_layouts_add_interleaving_only_when_asked() -> None:
    spec = JobSpec(**JOB)
    plain = layouts(spec)
    assert layouts(spec, interleaving=(1,)) == plain
    assert {c.pipeline_interleaving for c in plain} == {1}
    wide = layouts(spec, interleaving=INTERLEAVINGS)
    assert wide[: len(plain)] != [] and set(plain) < set(wide)
    interleaved = [c for c in wide if c.pipeline_interleaving > 1]
    assert {c.pipeline_interleaving for c in interleaved} == {2, 4}
    for c in interleaved:
        assert c.pipeline_parallel > 1
        assert c.num_layers % (c.pipeline_parallel * c.pipeline_interleaving) == 0
        assert c.micro_batches % c.pipeline_parallel == 0


def test_search_ranks_within_memory_fastest_first(job_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = whatif(capsys, "--spec", str(job_file), "--top", "7", "--output", "json")
    assert code == 0, err
    doc = json.loads(out)
    spec = JobSpec(**JOB)
    ranked = doc["ranked"]
    assert [e["rank"] for e in ranked] == list(range(1, 8))
    seconds = [e["iteration_seconds"] for e in ranked]
    assert seconds == sorted(seconds)
    assert doc["configurations"] == len(search_ranked(spec, pm.load_constants(spec.gpu))) > 100
    own = doc["job"]["iteration_seconds"]
    assert own == pytest.approx(pm.iteration_seconds(spec, pm.load_constants(spec.gpu)), rel=JSON_REL)
    mape = doc["uncertainty"]["mape_percent"]
    error = held_out_error("a100-80gb")
    assert error is not None and mape == error.mape_percent > 0
    for e in ranked:
        candidate = JobSpec.from_json(e["spec"])  # a spec --spec takes again
        assert (candidate.num_gpus, candidate.global_batch) == (16, 64)
        assert e["memory_bytes_per_gpu"] <= spec.gpu_spec.memory_total_bytes
        assert e["speedup"] == pytest.approx(own / e["iteration_seconds"], rel=JSON_REL)
        assert e["iteration_seconds_low"] == pytest.approx(
            e["iteration_seconds"] * (1 - mape / 100), rel=JSON_REL
        )
        assert e["iteration_seconds_high"] == pytest.approx(
            e["iteration_seconds"] * (1 + mape / 100), rel=JSON_REL
        )
        assert "index" not in e
    assert ranked[0]["speedup"] >= 1.0  # the job itself is in the space


def test_table_names_the_band_and_the_speedup(job_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = whatif(capsys, "--spec", str(job_file), "--top", "3")
    assert code == 0
    assert out.startswith("job: t=2 p=2 d=4 b=2:")
    assert re.search(r"^1 +t=\d", out, re.MULTILINE)
    assert "held-out MAPE" in out and "x " in out


def test_a_derived_gpu_takes_the_error_of_its_source() -> None:
    error = held_out_error("h200")
    assert error is not None and error.measured_on == "h100-sxm"


def test_candidates_are_ranked_with_their_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        dict(JOB),  # 0
        {**JOB, "tensor_parallel": 1, "pipeline_parallel": 1, "data_parallel": 16, "micro_batch": 4},  # 1
        None,  # 2: blank
        {**JOB, "tensor_parallel": 8, "pipeline_parallel": 1, "data_parallel": 2, "micro_batch": 1},  # 3
        {
            **JOB,
            "tensor_parallel": 1,
            "pipeline_parallel": 1,
            "data_parallel": 16,
            "micro_batch": 4,
            "hidden_size": 16384,
            "attention_heads": 128,
        },  # 4: does not fit
    ]
    path = tmp_path / "candidates.jsonl"
    path.write_text("\n".join("" if x is None else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    code, out, err = whatif(capsys, "--candidates", str(path), "--output", "json")
    assert code == 0, err
    doc = json.loads(out)
    constants = pm.load_constants("a100-80gb")
    expected = sorted(
        (pm.iteration_seconds(JobSpec(**lines[k]), constants), k)  # type: ignore[arg-type]
        for k in (0, 1, 3)
    )
    assert [e["index"] for e in doc["ranked"]] == [k for _, k in expected]
    assert [e["iteration_seconds"] for e in doc["ranked"]] == pytest.approx(
        [s for s, _ in expected], rel=JSON_REL
    )
    assert [x["index"] for x in doc["left_out"]] == [4]
    assert "GiB" in doc["left_out"][0]["reason"]
    assert doc["job"] is None and all(e["speedup"] is None for e in doc["ranked"])


def test_megatron_command_line_gives_the_job() -> None:
    spec = spec_from_command_line(LAUNCH, gpu="a100-80gb")
    assert spec == JobSpec(**JOB, gpus_per_node=8)
    options = megatron_options("--recompute-granularity=selective --sequence_parallel --use-flash-attn")
    assert options == {
        "recompute-granularity": "selective",
        "sequence-parallel": "true",
        "use-flash-attn": "true",
    }
    interleaved = spec_from_command_line(
        LAUNCH + " --num-layers-per-virtual-pipeline-stage 3 --recompute-granularity full "
        "--use-distributed-optimizer --sequence-parallel --use-flash-attn",
        gpu="a100-80gb",
    )
    assert interleaved.pipeline_interleaving == 4  # 24 layers / (2 stages · 3 layers)
    assert (interleaved.recompute, interleaved.sharding, interleaved.attention) == ("full", "zero1", "flash")
    assert interleaved.sequence_parallel


def test_nemo_overrides_give_the_job() -> None:
    text = (
        "python megatron_gpt_pretraining.py trainer.devices=8 trainer.num_nodes=2 "
        "model.tensor_model_parallel_size=2 model.pipeline_model_parallel_size=2 model.micro_batch_size=2 "
        "model.global_batch_size=64 model.num_layers=24 model.hidden_size=2048 model.num_attention_heads=16 "
        "model.encoder_seq_length=2048 model.activations_checkpoint_granularity=null"
    )
    assert spec_from_command_line(text, gpu="a100-80gb") == JobSpec(**JOB, gpus_per_node=8)


def test_megatron_args_file_ranks_like_the_spec(
    tmp_path: Path, job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    launch = tmp_path / "launch.sh"
    launch.write_text(LAUNCH, encoding="utf-8")
    code, out, err = whatif(capsys, "--megatron-args", str(launch), "--gpu", "a100-80gb", "--output", "json")
    assert code == 0, err
    from_args = json.loads(out)
    _, out, _ = whatif(capsys, "--spec", str(job_file), "--output", "json")
    from_spec = json.loads(out)
    assert [e["layout"] for e in from_args["ranked"]] == [e["layout"] for e in from_spec["ranked"]]


def test_optuna_study_takes_the_emitted_trials(
    job_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emitted = tmp_path / "trials.json"
    code, _, err = whatif(capsys, "--spec", str(job_file), "--top", "4", "--emit", "optuna", str(emitted))
    assert code == 0, err
    trials = json.loads(emitted.read_text(encoding="utf-8"))
    assert len(trials) == 4 and all(set(t) == set(OPTUNA_PARAMS) for t in trials)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="warm", direction="minimize"
    )
    for params in trials:
        study.enqueue_trial(params)
    constants = pm.load_constants("a100-80gb")

    def objective(trial: optuna.Trial) -> float:  # the space a person would give Optuna
        t = trial.suggest_categorical("tensor_parallel", [1, 2, 4, 8])
        p = trial.suggest_categorical("pipeline_parallel", [1, 2, 4])
        v = trial.suggest_categorical("pipeline_interleaving", [1, 2, 4])
        b = trial.suggest_categorical("micro_batch", [1, 2, 4, 8])
        recompute = trial.suggest_categorical("recompute", ["none", "selective", "full"])
        sharding = trial.suggest_categorical("sharding", ["none", "zero1", "zero2", "full"])
        sp = trial.suggest_categorical("sequence_parallel", [False, True])
        layout = {"tensor_parallel": t, "pipeline_parallel": p, "data_parallel": 16 // (t * p)}
        knobs = {"pipeline_interleaving": v, "micro_batch": b, "recompute": recompute}
        try:
            spec = JobSpec(**{**JOB, **layout, **knobs, "sharding": sharding, "sequence_parallel": sp})
        except SpecError:
            raise optuna.TrialPruned() from None
        return pm.iteration_seconds(spec, constants)

    study.optimize(objective, n_trials=6)
    done = study.get_trials(deepcopy=False)
    assert [t.params for t in done[:4]] == trials
    ranked = json.loads(whatif(capsys, "--spec", str(job_file), "--top", "4", "--output", "json")[1])[
        "ranked"
    ]
    expected = [e["iteration_seconds"] for e in ranked]
    assert [t.value for t in done[:4]] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("args", "code", "pattern"),
    [
        ([], 2, r"give the job: --spec, --megatron-args or --slurm-job"),
        (["--spec", "{tmp}/job.json", "--megatron-args", "{tmp}/launch.sh"], 2, r"give one of --spec"),
        (["--megatron-args", "{tmp}/launch.sh"], 2, r"does not say the GPU type: give --gpu"),
        (
            ["--megatron-args", "{tmp}/short.sh", "--gpu", "a100-80gb"],
            2,
            r"lacks --micro-batch-size, --global-batch-size, --num-layers",
        ),
        (
            ["--megatron-args", "{tmp}/unset.sh", "--gpu", "a100-80gb", "--gpus", "8"],
            2,
            r"--num-layers: '\$LAYERS' is not a whole number \(a shell variable",
        ),
        (["--megatron-args", "{tmp}/missing.sh", "--gpu", "a100-80gb"], 2, r"cannot read command line file"),
        (["--candidates", "{tmp}/bad.jsonl"], 2, r"bad\.jsonl line 2: not JSON"),
        (["--candidates", "{tmp}/unknown.jsonl"], 2, r"unknown\.jsonl line 1: unknown field\(s\) layers"),
        (["--spec", "{tmp}/job.json", "--emit", "optuna", "{tmp}/no/such/dir/t.json"], 7, r"cannot write"),
        (["--spec", "{tmp}/job.json", "--emit", "hyperopt", "{tmp}/t.json"], 2, r"'hyperopt' is not"),
    ],
    ids=[
        "no-job",
        "two-jobs",
        "no-gpu",
        "missing-flag",
        "unresolved-variable",
        "missing-file",
        "candidate-not-json",
        "candidate-unknown-field",
        "emit-unwritable",
        "emit-unknown-format",
    ],
)
def test_bad_input_is_one_line(
    args: list[str], code: int, pattern: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.json").write_text(json.dumps(JOB), encoding="utf-8")
    (tmp_path / "launch.sh").write_text(LAUNCH, encoding="utf-8")
    (tmp_path / "short.sh").write_text("torchrun --nproc-per-node 8 pretrain_gpt.py --hidden-size 1024\n")
    (tmp_path / "unset.sh").write_text(LAUNCH.replace("--num-layers 24", "--num-layers $LAYERS"))
    (tmp_path / "bad.jsonl").write_text(json.dumps(JOB) + "\n{nope\n", encoding="utf-8")
    (tmp_path / "unknown.jsonl").write_text(json.dumps({**JOB, "layers": 3}) + "\n", encoding="utf-8")
    exit_code, _, err = whatif(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("zest: error: ") and re.search(pattern, lines[0]), lines[0]
    assert exit_code == code


def test_a_slurm_jobs_batch_script_gives_the_job(slurm_cluster: SlurmCluster, job_file: Path) -> None:
    # the job sleeps; what matters is its batch script, which holds the Megatron command line
    command = (
        "sleep 300 || echo torchrun --nproc_per_node=8 --nnodes 2 pretrain_gpt.py "
        "--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --num-layers 24 --hidden-size 2048 "
        "--num-attention-heads 16 --seq-length 2048 --micro-batch-size 2 --global-batch-size 64"
    )
    job = slurm_cluster.submit_running("--gres=gpu:2", "-J", "zest-whatif", command=command)
    try:
        code = "from estimator.cli.main import main; main()"
        done = subprocess.run(
            [sys.executable, "-c", code, "whatif", "--slurm-job", job, "--gpu", "a100-80gb", "--output=json"],
            capture_output=True,
            text=True,
            env=slurm_cluster.env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["job"]["spec"] == {**JOB, "gpus_per_node": 8}
        assert any(f"Slurm job {job}" in note for note in doc["notes"])
        unknown = subprocess.run(
            [sys.executable, "-c", code, "whatif", "--slurm-job", "987654", "--gpu", "a100-80gb"],
            capture_output=True,
            text=True,
            env=slurm_cluster.env,
            timeout=120,
        )
        assert unknown.returncode == 10 and unknown.stderr.count("\n") == 1, unknown.stderr
        assert "no batch script of job 987654" in unknown.stderr
    finally:
        slurm_cluster.run(["scancel", job])
