"""Training rows from the measured vTrain data, grouped evaluation, capture shares and the model commands.

These tests read the real data where CI keeps it, beside the repository
(``../shared/data/vtrain``); without it they fail, saying where it should be.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from click.testing import CliRunner

from collectors.errors import InputError
from collectors.files import read_capture
from estimator.cli.model import evaluate_command as evaluate_cli
from estimator.cli.model import simulate, train
from estimator.features.extract import FEATURES
from estimator.model.compiled import LoadedModel
from estimator.model.regressor import MODEL_FEATURES, ZeRegressor, load_model
from estimator.perfmodel.iteration import SpecError
from estimator.training.evaluation import (
    CARD_BEGIN,
    CARD_END,
    METHODS,
    REUSES,
    ZEST,
    best_of_random_seconds,
    capture_share_table,
    default_capture_shares,
    evaluate,
    render_markdown,
    update_card,
)
from estimator.training.heldout import (
    HELD_OUT_BEGIN,
    HELD_OUT_END,
    MPT_FILE,
    evaluate_held_out,
    held_out_rows,
    read_mpt_studies,
    render_held_out_markdown,
    score_held_out,
)
from estimator.training.rows import (
    DATA_FILE,
    DESCRIPTION,
    ITERATION_SECONDS,
    LABEL_SOURCE,
    NUM_GPUS,
    SEQUENCE_LENGTH,
    SET,
    STUDY,
    Z_PERCENT,
    DataError,
    StudyData,
    measured_z_percent,
    read_study_data,
    training_rows,
)

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data" / "vtrain"


@pytest.fixture(scope="module")
def data() -> StudyData:
    if not (DATA_DIR / DATA_FILE).is_file():
        pytest.fail(f"measured data not found at {DATA_DIR / DATA_FILE}: CI keeps it beside the repository")
    return read_study_data(DATA_DIR)


def kept(data: StudyData, studies: int) -> pd.Series:
    """Mask of the rows of the first ``studies`` studies with 3 or more configurations."""
    sizes = data.frame.groupby(STUDY).size()
    return data.frame[STUDY].isin(sizes[sizes >= 3].index[:studies])


def subset(data: StudyData, studies: int) -> StudyData:
    """Those studies alone, study ids renumbered from 0."""
    frame = data.frame[kept(data, studies)].reset_index(drop=True)
    frame[STUDY] = frame.groupby(STUDY).ngroup().astype(np.int64)
    return StudyData(frame, data.path, data.sha256)


# --- the data ----------------------------------------------------------------------------------------


def test_measured_data_has_108_studies_and_z_is_zero_at_each_best(data: StudyData) -> None:
    frame = data.frame
    assert len(frame) == 1103 and data.studies == 108
    assert frame.groupby(STUDY)[Z_PERCENT].min().eq(0).all()
    assert frame[Z_PERCENT].between(0, 100, inclusive="left").all()


def test_z_by_hand() -> None:
    seconds = pd.Series([0.2, 0.4, 0.5, 1.0, 3.0])
    study = pd.Series([0, 0, 0, 1, 1])
    got = measured_z_percent(seconds, study)
    pdt.assert_series_equal(got, pd.Series([0.0, 50.0, 60.0, 0.0, 100 * 2 / 3], name=Z_PERCENT))


def test_missing_data_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"pass --data DIR, the folder holding {DATA_FILE}"):
        read_study_data(tmp_path)


def test_malformed_data_is_a_data_error(tmp_path: Path, data: StudyData) -> None:
    raw = pd.read_csv(data.path)
    raw.drop(columns="micro batch").iloc[:5].to_csv(tmp_path / DATA_FILE, index=False)
    with pytest.raises(DataError, match="lacks column"):
        read_study_data(tmp_path)
    bad = raw.iloc[:5].copy()
    bad.loc[2, "iteration time (ms)"] = -1.0
    bad.to_csv(tmp_path / DATA_FILE, index=False)
    with pytest.raises(DataError, match="row 4 has a missing, non-numeric or non-positive value"):
        read_study_data(tmp_path)


# --- training rows -----------------------------------------------------------------------------------


def test_training_rows_pair_simulated_features_with_measured_z_and_are_cached(
    tmp_path: Path, data: StudyData
) -> None:
    small = subset(data, 3)
    rows = training_rows(small, minutes=1, seed=7, cache_dir=tmp_path / "cache")
    assert list(rows.columns) == [*FEATURES, STUDY, Z_PERCENT, *DESCRIPTION]
    assert (rows[LABEL_SOURCE] == "measured").all() and (rows[SET] == "vTrain, one node").all()
    assert (rows[NUM_GPUS] == rows["gpus"]).all() and (rows[SEQUENCE_LENGTH] == 1024).all()
    assert len(rows) == len(small.frame)
    np.testing.assert_array_equal(rows[Z_PERCENT], small.frame[Z_PERCENT])
    assert rows[list(MODEL_FEATURES)].notna().all().all()
    assert (rows["gpus"] == small.frame["# GPUs"]).all()
    cached = list((tmp_path / "cache").glob("training_rows_*.parquet"))
    assert len(cached) == 1 and (tmp_path / "cache" / ".gitignore").read_text().endswith("*\n")
    pdt.assert_frame_equal(training_rows(small, minutes=1, seed=7, cache_dir=tmp_path / "cache"), rows)
    again = training_rows(small, minutes=1, seed=7)  # simulated afresh: deterministic
    pdt.assert_frame_equal(again, rows)
    other_seed = training_rows(small, minutes=1, seed=8)
    assert not other_seed[MODEL_FEATURES[0]].equals(rows[MODEL_FEATURES[0]])


# --- evaluation --------------------------------------------------------------------------------------


def test_grouped_evaluation_of_a_subset_gives_finite_numbers(data: StudyData) -> None:
    small = subset(data, 9)
    rows = training_rows(small, minutes=1)
    result = evaluate(small, rows, folds=3, make_model=lambda: ZeRegressor(max_iter=30, min_samples_leaf=5))
    table = result.table.set_index("method")
    assert list(table.index) == list(METHODS.values())
    zest = table.loc[METHODS[ZEST]].to_dict()
    assert math.isfinite(zest["mae_pp"]) and 0 <= zest["mae_pp"] < 100
    assert -1 <= zest["spearman_median"] <= 1
    assert 0 <= zest["coverage_ratio"] <= 1
    for r in REUSES:
        assert 0 <= zest[f"verdict_agreement_r{r}"] <= 1
    rho = table["spearman_median"].to_dict()
    assert math.isnan(rho[METHODS["training_mean"]])  # constant within a study
    assert rho[METHODS["perfmodel"]] > 0.5
    assert result.decisions[["agree_ratio", "marginal_ratio", "wrong_ratio"]].sum(axis=1).round(9).eq(1).all()
    # every study is held out exactly once: each row has a zest prediction
    assert result.predictions[ZEST].notna().all()
    markdown = render_markdown(result)
    assert "| zest (Z_e model) |" in markdown and "nan" not in markdown


def test_update_card_replaces_only_the_marked_section() -> None:
    card = f"# card\n\nintro\n\n{CARD_BEGIN}\nold table\n{CARD_END}\n\nafter\n"
    assert (
        update_card(card, "new table\n")
        == f"# card\n\nintro\n\n{CARD_BEGIN}\nnew table\n{CARD_END}\n\nafter\n"
    )
    with pytest.raises(ValueError, match="lacks the markers"):
        update_card("# card without markers\n", "x")


# --- capture shares ----------------------------------------------------------------------------------


def test_best_of_n_random_draws_by_hand() -> None:
    times = [4.0, 1.0, 3.0, 2.0]
    # N = 2 of 4: the best is 1 in 3 of the 6 pairs, 2 in 2 of them, 3 in 1: (3·1 + 2·2 + 1·3) / 6
    assert best_of_random_seconds(times, 2) == pytest.approx(10 / 6)
    assert best_of_random_seconds(times, 1) == pytest.approx(2.5)
    assert best_of_random_seconds(times, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="between 1 and the 4 configurations"):
        best_of_random_seconds(times, 5)


def test_capture_shares_of_a_hand_study() -> None:
    # Times 1, 2, 3, 4 s: Z = 0, 1/2, 2/3, 3/4 (sum 23/12). The heuristic picks the 2 s row (largest
    # micro-batch): gains 0, 0, 1/3, 1/2 → share (5/6)/(23/12) = 10/23. One random draw (N = ⌈0.25·4⌉):
    # expected gains 0, 1/8, 1/4, 3/8 → share (3/4)/(23/12) = 9/23.
    study = pd.DataFrame(
        {
            STUDY: [0, 0, 0, 0],
            ITERATION_SECONDS: [1.0, 2.0, 3.0, 4.0],
            "micro batch": [1, 4, 2, 1],
            "tensor parallelism": [2, 2, 1, 1],
            "pipeline parallelism": [1, 1, 2, 1],
        }
    )
    shares = capture_share_table(study).iloc[0]
    assert shares["exhaustive"] == 1.0
    assert shares["heuristic"] == pytest.approx(10 / 23)
    assert shares["random_f0.25"] == pytest.approx(9 / 23)
    assert shares["random_f1"] == pytest.approx(1.0)
    defaults = default_capture_shares(capture_share_table(study))["shares"]
    assert defaults["black-box"]["share"] == pytest.approx(9 / 23, abs=1e-4)
    assert defaults["heuristic"]["share"] == pytest.approx(10 / 23, abs=1e-4)


def test_the_heuristic_breaks_ties_by_least_model_parallelism() -> None:
    study = pd.DataFrame(
        {
            STUDY: [0, 0, 0],
            ITERATION_SECONDS: [3.0, 1.0, 2.0],
            "micro batch": [4, 4, 2],
            "tensor parallelism": [2, 1, 1],
            "pipeline parallelism": [2, 2, 1],
        }
    )
    # rows 0 and 1 share the largest micro-batch; row 1 has less model parallelism (t·p = 2 < 4)
    assert capture_share_table(study).iloc[0]["heuristic"] == pytest.approx(1.0)


# --- the commands ------------------------------------------------------------------------------------


def write_spec(path: Path, **overrides: object) -> Path:
    spec = {
        "gpu": "A100-80GB",
        "num_gpus": 8,
        "hidden_size": 2048,
        "attention_heads": 16,
        "num_layers": 24,
        "sequence_length": 2048,
        "global_batch": 64,
        "micro_batch": 4,
        "tensor_parallel": 2,
        "pipeline_parallel": 1,
        "data_parallel": 4,
        **overrides,
    }
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_simulate_writes_a_capture_the_file_source_reads(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "job.json")
    out = tmp_path / "capture.parquet"
    args = ["--spec", str(spec), "--job-id", "j1", "--output", str(out), "--minutes", "2", "--seed", "3"]
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    capture = read_capture(out)
    assert len(capture.frame) == 8 * 120
    assert set(capture.frame["job_id"]) == {"j1"}
    assert any("simulated by zest simulate" in note for note in capture.notes)
    refused = CliRunner().invoke(simulate, args)  # an existing capture is kept
    assert refused.exit_code == 2 and "exists; pass --force to replace it" in refused.output
    assert CliRunner().invoke(simulate, [*args, "--force"]).exit_code == 0
    pdt.assert_frame_equal(read_capture(out).frame, capture.frame)  # the same seed, the same samples


def test_simulate_lets_a_bad_spec_error_through(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "job.json", data_parallel=2)
    args = ["--spec", str(spec), "--job-id", "j", "--output", str(tmp_path / "c.parquet")]
    result = CliRunner().invoke(simulate, args)
    assert isinstance(result.exception, SpecError)
    assert "num_gpus is 8" in str(result.exception)


def test_train_and_evaluate_commands_on_a_small_copy_of_the_data(tmp_path: Path, data: StudyData) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pd.read_csv(data.path)[kept(data, 5).to_numpy()].to_csv(data_dir / DATA_FILE, index=False)
    small = read_study_data(data_dir)
    cache = ["--cache-dir", str(tmp_path / "cache"), "--simulated-studies", "3"]
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(train, ["--data", str(data_dir), "--output-dir", str(out), *cache])
    assert result.exit_code == 0, result.output
    model = load_model(out / "ze_model.skops")
    meta = json.loads((out / "ze_model.json").read_text(encoding="utf-8"))
    trained = meta["training_data"]
    assert trained["measured_rows"] == len(small.frame) and trained["simulated_studies"] == 3
    assert trained["rows"] == len(small.frame) + trained["simulated_rows"] and trained["simulated_rows"] > 3
    assert len({p.name.split("_")[0] for p in (tmp_path / "cache").glob("*.parquet")}) == 2  # both kept
    assert meta["features"] == list(model.feature_names_in_)
    assert small.studies == 5
    assert (tmp_path / "cache" / ".gitignore").is_file()

    missing = CliRunner().invoke(
        train, ["--data", str(tmp_path / "nowhere"), "--output-dir", str(out), *cache]
    )
    assert isinstance(missing.exception, DataError) and "--data" in str(missing.exception)

    card = tmp_path / "README.md"
    card.write_text(f"# card\n{CARD_BEGIN}\n{CARD_END}\n", encoding="utf-8")
    no_store = tmp_path / "outcomes.sqlite"
    result = CliRunner().invoke(
        evaluate_cli, ["--data", str(data_dir), "--card", str(card), "--store", str(no_store), *cache]
    )
    assert result.exit_code == 0, result.output
    assert f"Local outcomes: none; no outcomes store at {no_store}" in result.output
    text = card.read_text(encoding="utf-8")
    assert "| zest (Z_e model) |" in text and text.startswith("# card\n") and text.endswith(f"{CARD_END}\n")
    assert "**Simulated labels**" in text and "| simulated, " in text  # scored apart from the measured


# --- held-out evaluation on llm-foundry-like measurements ---------------------------------------------

MPT_COLUMNS = (
    "table,model,seq_len,n_gpus,gpu,micro_batch_size,grad_accum,global_batch_size,throughput_tokens_per_s,"
    "throughput_tokens_per_s_per_gpu,global_batch_tokens,precision,sharding_strategy,activation_checkpointing,activation_cpu_offload"
)


def write_mpt_table(root: Path) -> Path:
    """A hand-made table in llm-foundry's columns: one 3-configuration study on 8 A100s (125, 100 and 62.5
    tokens/s per GPU: Z = 0, 20, 50 %) plus a faster FP8 row of the same job (dropped, so not its best), and
    one study of one configuration, another model, on 16 GPUs (two nodes)."""
    table = "A100 80GB with 1600 Gbps node-node interconnect (RoCE)"
    lines = [
        MPT_COLUMNS,
        f"{table},125m,2048,8,a100_80gb,4,16,512,1000,125,1048576,amp_bf16,FULL_SHARD,False,False",
        f"{table},125m,2048,8,a100_80gb,8,8,512,800,100,1048576,amp_bf16,FULL_SHARD,False,False",
        f"{table},125m,2048,8,a100_80gb,16,4,512,500,62.5,1048576,amp_bf16,FULL_SHARD,True,False",
        f"{table},125m,2048,8,a100_80gb,16,4,512,2000,250,1048576,amp_fp8,FULL_SHARD,False,False",
        f"{table},350m,2048,16,a100_80gb,8,4,512,3000,187.5,1048576,amp_bf16,FULL_SHARD,False,False",
    ]
    path = root / MPT_FILE
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_held_out_studies_and_measured_z_by_hand(tmp_path: Path) -> None:
    write_mpt_table(tmp_path)
    held = read_mpt_studies(tmp_path)
    frame = held.frame
    assert len(frame) == len(held.specs) == 4
    np.testing.assert_allclose(frame[Z_PERCENT], [0.0, 20.0, 50.0, 0.0])
    assert frame[STUDY].tolist() == [0, 0, 0, 1]
    assert frame["set"].tolist() == ["llm-foundry, one node"] * 3 + ["llm-foundry, several nodes"]
    assert frame["hosts"].tolist() == [1, 1, 1, 2]
    assert held.dropped["rows"].tolist() == [1] and "FP8" in held.dropped["reason"].iloc[0]
    assert [s.sharding for s in held.specs] == ["full"] * 4
    # FlashAttention without checkpointing stores no scores: recompute "none"; checkpointing is "full"
    assert [s.recompute for s in held.specs] == ["none", "none", "full", "none"]
    assert {s.attention for s in held.specs} == {"flash"}

    with pytest.raises(DataError, match="--held-out"):
        read_mpt_studies(tmp_path / "nowhere")
    bad = pd.read_csv(tmp_path / MPT_FILE).drop(columns=["seq_len"])
    bad.to_csv(tmp_path / MPT_FILE, index=False)
    with pytest.raises(DataError, match="seq_len"):
        read_mpt_studies(tmp_path)


def test_held_out_scores_mae_spearman_and_coverage_by_hand() -> None:
    one, many = "llm-foundry, one node", "llm-foundry, several nodes"
    predictions = pd.DataFrame(
        {
            "set": [one, one, one, one, many],
            STUDY: [0, 0, 0, 1, 2],
            Z_PERCENT: [0.0, 20.0, 50.0, 0.0, 0.0],
            "zest_low": [0.0, 15.0, 10.0, 0.0, 0.0],
            ZEST: [5.0, 25.0, 30.0, 40.0, 9.0],
            "training_mean": [30.0] * 5,
            "sm_rule": [50.0, 20.0, 0.0, 1.0, 1.0],
            "perfmodel": [0.0, 10.0, 60.0, 0.0, 0.0],
            "zest_high": [10.0, 30.0, 40.0, 50.0, 20.0],
        }
    )
    table = score_held_out(predictions)
    assert list(table.columns) == [
        "set",
        "rows",
        "studies",
        "scored_rows",
        "scored_studies",
        "method",
        "mae_pp",
        "spearman_median",
        "spearman_studies",
        "coverage_ratio",
    ]
    assert table["set"].unique().tolist() == [one, many, "llm-foundry, all"]
    by = table[table["set"] == one].set_index("method")
    zest = by.loc[METHODS[ZEST]]
    # scored: the 3-row study only (a study of one has Z = 0 by definition)
    assert (zest["rows"], zest["studies"], zest["scored_rows"], zest["scored_studies"]) == (4, 2, 3, 1)
    assert zest["mae_pp"] == pytest.approx((5 + 5 + 20) / 3)
    assert zest["coverage_ratio"] == pytest.approx(2 / 3)  # 50 lies above 40
    assert zest["spearman_median"] == pytest.approx(1.0)
    assert by.loc[METHODS["sm_rule"], "spearman_median"] == pytest.approx(-1.0)
    assert by.loc[METHODS["perfmodel"], "mae_pp"] == pytest.approx((0 + 10 + 10) / 3)
    assert by.loc[METHODS["training_mean"], "mae_pp"] == pytest.approx((30 + 10 + 20) / 3)
    assert math.isnan(float(by.loc[METHODS["training_mean"], "spearman_median"]))
    assert math.isnan(float(by.loc[METHODS["perfmodel"], "coverage_ratio"]))
    nothing = table[table["set"] == many]
    assert (nothing["scored_rows"] == 0).all() and nothing["mae_pp"].isna().all()
    assert nothing["coverage_ratio"].isna().all()


def test_held_out_evaluation_of_a_fitted_model(tmp_path: Path, data: StudyData) -> None:
    write_mpt_table(tmp_path)
    held = read_mpt_studies(tmp_path)
    rows = held_out_rows(held, minutes=1, seed=3)
    assert list(rows.columns) == [*FEATURES, "set", STUDY, Z_PERCENT]
    assert rows[list(MODEL_FEATURES)].notna().all().all()
    assert rows["gpus"].tolist() == [8, 8, 8, 16]
    pdt.assert_frame_equal(held_out_rows(held, minutes=1, seed=3), rows)  # deterministic

    small = subset(data, 5)
    model = ZeRegressor(max_iter=30, min_samples_leaf=5).fit(
        training_rows(small, minutes=1)[list(MODEL_FEATURES)],
        small.frame[Z_PERCENT],
        groups=small.frame[STUDY],
    )
    domain = {"gpu_models": ["a100-80gb"], "gpus": [2, 8], "hosts": [1, 1]}
    loaded = LoadedModel(model, {"training_data": {"domain": domain}})
    result = evaluate_held_out(held, rows, loaded, training_mean=33.5)
    p = result.predictions
    assert (p["zest_low"] <= p[ZEST]).all() and (p[ZEST] <= p["zest_high"]).all()
    assert (p["training_mean"] == 33.5).all()
    assert p.groupby(STUDY)["perfmodel"].min().eq(0).all()  # each study's predicted best
    assert result.outside_domain == 1  # only the 16-GPU, 2-host row by the model's own check
    markdown = render_held_out_markdown(result, held)
    assert "| llm-foundry, one node | 4 | 2 |" not in markdown  # sets are scored apart
    assert "| llm-foundry, one node | 3 | 1 | 3 (1) | zest (Z_e model) |" in markdown
    assert "| llm-foundry, several nodes | 1 | 1 | 0 (0) | every method |" in markdown
    assert "Outside the training domain" in markdown and "nan" not in markdown


def test_evaluate_command_writes_the_held_out_section(tmp_path: Path, data: StudyData) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pd.read_csv(data.path)[kept(data, 5).to_numpy()].to_csv(data_dir / DATA_FILE, index=False)
    write_mpt_table(tmp_path / "shared")
    card = tmp_path / "README.md"
    before = f"# card\n{CARD_BEGIN}\n{CARD_END}\n\nkept\n{HELD_OUT_BEGIN}\nOLD TABLE\n{HELD_OUT_END}\ntail\n"
    card.write_text(before, encoding="utf-8")
    args = ["--data", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--store", str(tmp_path / "s")]
    args += ["--simulated-studies", "0"]
    result = CliRunner().invoke(
        evaluate_cli, [*args, "--held-out", str(tmp_path / "shared"), "--card", str(card)]
    )
    assert result.exit_code == 0, result.output
    assert "| llm-foundry, one node | 3 | 1 | 3 (1) |" in result.output
    text = card.read_text(encoding="utf-8")
    assert "| zest (Z_e model) |" in text.split(CARD_END)[0]
    held = text.split(HELD_OUT_BEGIN)[1].split(HELD_OUT_END)[0]
    assert "OLD TABLE" not in held and "| vTrain, one node (cross-validated) |" in held
    assert text.endswith(f"{HELD_OUT_END}\ntail\n") and "\nkept\n" in text

    card.write_text(f"# card\n{CARD_BEGIN}\n{CARD_END}\n", encoding="utf-8")
    no_markers = CliRunner().invoke(
        evaluate_cli, [*args, "--held-out", str(tmp_path / "shared"), "--card", str(card)]
    )
    assert isinstance(no_markers.exception, InputError) and HELD_OUT_BEGIN in str(no_markers.exception)
    assert card.read_text(encoding="utf-8") == f"# card\n{CARD_BEGIN}\n{CARD_END}\n"  # nothing written
