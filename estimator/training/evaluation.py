"""Grouped evaluation of the Z_e model on measured labels, its baselines, and measured capture shares.

Pure: DataFrames in, DataFrames and dataclasses out. :func:`evaluate` runs
cross-validation grouped by study (a study never straddles train and test) on
the training rows of :mod:`estimator.training.rows` and scores zest beside three
baselines: the training mean, the rule Z = 100 · (1 − mean SM active), and the
performance model's own Z. :func:`capture_share_table` measures, on the same
studies, the share of the exhaustive search's gain that random search with N
trials and a named heuristic capture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import rankdata
from sklearn.model_selection import GroupKFold

from estimator.decision.algorithms import ALGORITHMS_BY_NAME, DEFAULT_TRIAL_MINUTES
from estimator.decision.breakeven import Candidate, Costs, Job, Verdict, ZInterval, assess
from estimator.features.extract import ratio_feature
from estimator.model.regressor import MODEL_FEATURES, Z_MAX_PERCENT, ZeRegressor
from estimator.perfmodel import calibration
from estimator.perfmodel import iteration as perfmodel
from estimator.training.rows import (
    GPU_MODEL,
    ITERATION_SECONDS,
    LABEL_SOURCE,
    MEASURED,
    MICRO_BATCH,
    PIPELINE_PARALLEL,
    SET,
    SIMULATED,
    STUDY,
    TENSOR_PARALLEL,
    Z_PERCENT,
    StudyData,
    job_specs,
    measured_z_percent,
    row_weights,
)
from estimator.training.simulated import SEVERAL_NODES as SIMULATED_SEVERAL_NODES

__all__ = [
    "CARD_BEGIN",
    "CARD_END",
    "DURATION_HOURS",
    "REUSES",
    "Evaluation",
    "accuracy",
    "best_of_random_seconds",
    "capture_share_table",
    "cross_validated_predictions",
    "default_capture_shares",
    "evaluate",
    "fmt_number",
    "fmt_percent",
    "heuristic_choice",
    "perfmodel_z_percent",
    "render_markdown",
    "score",
    "sm_rule_z_percent",
    "update_card",
    "within_study_spearman",
]

FloatArray = npt.NDArray[np.float64]

#: The break-even setting of the verdict check: T = 150 h, t = 25 min, R = 1, 5, 20.
DURATION_HOURS: Final = 150.0
TRIAL_HOURS: Final = DEFAULT_TRIAL_MINUTES / 60.0
REUSES: Final = (1, 5, 20)
FOLDS: Final = 5
SPEARMAN_MIN_ROWS: Final = 3

#: Methods in the evaluation table, in order: column of predictions and the label shown.
ZEST: Final = "zest"
METHODS: Final = {
    ZEST: "zest (Z_e model)",
    "training_mean": "training mean",
    "sm_rule": "100·(1 − mean SM active)",
    "perfmodel": "performance model's own Z",
}
LOW, HIGH = "zest_low", "zest_high"

CARD_BEGIN: Final = "<!-- evaluation:begin -->"
CARD_END: Final = "<!-- evaluation:end -->"

SM_ACTIVE_MEAN: Final = ratio_feature("sm_active_ratio", "mean")


# --- predictions -----------------------------------------------------------------


def perfmodel_z_percent(data: StudyData) -> pd.Series:
    """The performance model's Z(c): 100 · (1 − predicted best time / predicted time at c), per study."""
    constants = perfmodel.load_constants(calibration.FITTED_GPU.key)
    seconds = pd.Series([perfmodel.iteration_seconds(s, constants) for s in job_specs(data.frame)])
    return measured_z_percent(seconds, pd.Series(data.frame[STUDY].to_numpy())).clip(0.0, Z_MAX_PERCENT)


def sm_rule_z_percent(rows: pd.DataFrame) -> FloatArray:
    """The rule baseline Z = 100 · (1 − mean SM active), clipped to the model's range, per row of features."""
    return np.clip(100.0 * (1.0 - rows[SM_ACTIVE_MEAN].to_numpy()), 0.0, Z_MAX_PERCENT)


def cross_validated_predictions(
    rows: pd.DataFrame,
    perfmodel_z: pd.Series,
    *,
    folds: int = FOLDS,
    make_model: Callable[[], ZeRegressor] = ZeRegressor,
) -> pd.DataFrame:
    """Held-out predictions of every method for every row, by :class:`GroupKFold` over studies.

    ``rows``: :func:`estimator.training.rows.model_rows` (or measured rows
    alone); ``perfmodel_z``: the performance model's Z per row (same order;
    NaN where it is the label itself, on simulated rows). Returns STUDY, SET,
    LABEL_SOURCE, Z_PERCENT, ``zest_low``, one column per method of
    :data:`METHODS` and ``zest_high``.
    """
    studies = rows[STUDY].to_numpy()
    y = rows[Z_PERCENT].to_numpy(dtype=np.float64)
    X = rows[list(MODEL_FEATURES)]
    weights = row_weights(rows)
    out = pd.DataFrame(
        {STUDY: studies, SET: rows[SET].to_numpy(), LABEL_SOURCE: rows[LABEL_SOURCE].to_numpy()}
    )
    out[Z_PERCENT] = y
    low, mid, high, mean = (np.full(len(rows), np.nan) for _ in range(4))
    n_folds = min(folds, len(np.unique(studies)))
    for train, test in GroupKFold(n_splits=n_folds).split(X, y, studies):
        model = make_model().fit(X.iloc[train], y[train], groups=studies[train], sample_weight=weights[train])
        low[test], mid[test], high[test] = model.predict_interval(X.iloc[test])
        mean[test] = y[train].mean()
    out[LOW] = low
    out[ZEST] = mid
    out["training_mean"] = mean
    out["sm_rule"] = sm_rule_z_percent(rows)
    out["perfmodel"] = perfmodel_z.to_numpy(dtype=np.float64)
    out[HIGH] = high
    return out


# --- scores ----------------------------------------------------------------------


def _spearman(a: FloatArray, b: FloatArray) -> float:
    """Spearman's rank correlation; NaN when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def within_study_spearman(predictions: pd.DataFrame, column: str) -> pd.Series:
    """Spearman of ``column`` against measured Z in each study of at least 3 rows (NaN: constant)."""
    return pd.Series(
        {
            study: _spearman(g[column].to_numpy(), g[Z_PERCENT].to_numpy())
            for study, g in predictions.groupby(STUDY, sort=True)
            if len(g) >= SPEARMAN_MIN_ROWS
        },
        dtype=np.float64,
    )


def _verdicts(z: pd.DataFrame, trials: pd.Series, reuse: int) -> list[Verdict]:
    """Verdict of exhaustive search over each row's study (N = study size) at T, t and ``reuse``."""
    job = Job(duration_hours=DURATION_HOURS, reuse=float(reuse))
    costs = Costs()
    return [
        assess(Candidate("exhaustive", int(n), TRIAL_HOURS, ZInterval(lo, mid, hi)), job, costs).verdict
        for lo, mid, hi, n in zip(z["low"], z["mid"], z["high"], trials, strict=True)
    ]


def accuracy(predictions: pd.DataFrame, method: str) -> dict[str, float]:
    """How ``method``'s column of ``predictions`` matches the measured Z: MAE (pp, NaN without rows),
    median Spearman within studies and how many studies it rests on, and the interval's coverage (zest
    only; NaN for the others)."""
    truth = predictions[Z_PERCENT]
    rhos = within_study_spearman(predictions, method)
    coverage = math.nan
    if method == ZEST and len(predictions):
        coverage = float(((predictions[LOW] <= truth) & (truth <= predictions[HIGH])).mean())
    return {
        "mae_pp": float((predictions[method] - truth).abs().mean()) if len(predictions) else math.nan,
        "spearman_median": float(rhos.median()) if rhos.notna().any() else math.nan,
        "spearman_studies": int(rhos.notna().sum()),
        "coverage_ratio": coverage,
    }


def score(predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluation table (one row per method) and zest's interval verdicts (one row per R).

    Table columns: MAE in percentage points, median within-study Spearman
    (NaN where predictions are constant within studies), interval coverage
    (zest only), and for each R the share of rows whose break-even verdict at
    the predicted Z (mid) equals the verdict at the measured Z. The verdicts
    weigh exhaustive search over the row's own study (N = its size, trial
    time t, job duration T; no engineering cost).
    """
    trials = predictions.groupby(STUDY)[STUDY].transform("size")
    truth = predictions[Z_PERCENT]
    true_z = pd.DataFrame({"low": truth, "mid": truth, "high": truth})
    true_verdicts = {r: _verdicts(true_z, trials, r) for r in REUSES}
    table = []
    for method, label in METHODS.items():
        predicted = predictions[method]
        figures = accuracy(predictions, method)
        entry: dict[str, Any] = {
            "method": label,
            **{k: figures[k] for k in ("mae_pp", "spearman_median", "coverage_ratio")},
        }
        point = pd.DataFrame({"low": predicted, "mid": predicted, "high": predicted})
        for r in REUSES:
            agree = np.equal(_verdicts(point, trials, r), true_verdicts[r])
            entry[f"verdict_agreement_r{r}"] = float(np.mean(agree))
        table.append(entry)
    interval = predictions[[LOW, ZEST, HIGH]].set_axis(["low", "mid", "high"], axis=1)
    decisions = []
    for r in REUSES:
        said = pd.Series(_verdicts(interval, trials, r))
        correct = said == pd.Series(true_verdicts[r])
        decisions.append(
            {
                "reuse": r,
                "agree_ratio": float(correct.mean()),
                "marginal_ratio": float((said == Verdict.MARGINAL).mean()),
                "wrong_ratio": float(((said != Verdict.MARGINAL) & ~correct).mean()),
                "truth_proceed_ratio": float(np.mean([v is Verdict.PROCEED for v in true_verdicts[r]])),
            }
        )
    return pd.DataFrame(table), pd.DataFrame(decisions)


# --- capture shares --------------------------------------------------------------


def best_of_random_seconds(seconds: Sequence[float] | FloatArray, trials: int) -> float:
    """Expected best (smallest) of ``trials`` draws without replacement from ``seconds``, exactly.

    With the M times sorted, the smallest of N draws is the i-th (1-based)
    with probability C(M − i, N − 1) / C(M, N).
    """
    ordered = np.sort(np.asarray(seconds, dtype=np.float64))
    m = len(ordered)
    if not 1 <= trials <= m:
        raise ValueError(f"trials must be between 1 and the {m} configurations, got {trials}")
    weights = np.array([math.comb(m - i, trials - 1) for i in range(1, m + 1)], dtype=np.float64)
    return float(ordered @ weights / math.comb(m, trials))


def _random_gains(seconds: FloatArray, trials: int) -> FloatArray:
    """Expected gain 1 − min(t_c, best of N draws)/t_c from each start c (fraction, not %)."""
    ordered = np.sort(seconds)
    m = len(ordered)
    weights = np.array([math.comb(m - i, trials - 1) for i in range(1, m + 1)], dtype=np.float64)
    weights /= math.comb(m, trials)
    best = np.minimum(seconds[:, None], ordered[None, :]) @ weights
    return np.asarray(1.0 - best / seconds, dtype=np.float64)


def heuristic_choice(study: pd.DataFrame) -> int:
    """The row label the named heuristic picks: largest micro-batch, then least model parallelism (t·p),
    then fewest pipeline stages."""
    key = pd.DataFrame(
        {
            "b": -study[MICRO_BATCH],
            "tp": study[TENSOR_PARALLEL] * study[PIPELINE_PARALLEL],
            "p": study[PIPELINE_PARALLEL],
        }
    )
    return key.sort_values(["b", "tp", "p"], kind="stable").index[0]


HEURISTIC_NAME: Final = "largest micro-batch, then least model parallelism (t·p), then fewest pipeline stages"
#: The black-box default's trials relative to the exhaustive default's: its budget relative to the space.
BLACK_BOX_TRIAL_FRACTION: Final = (
    ALGORITHMS_BY_NAME["black-box"].trials / ALGORITHMS_BY_NAME["exhaustive"].trials
)
#: Trial budgets relative to the study's size at which random search is scored.
TRIAL_FRACTIONS: Final = tuple(sorted({0.1, 0.2, 0.3, 0.5, 0.75, 1.0, BLACK_BOX_TRIAL_FRACTION}))


def capture_share_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Share of exhaustive search's gain that each algorithm captures, per study.

    ``frame``: the measured table with STUDY and ITERATION_SECONDS (as
    :func:`estimator.training.rows.read_study_data` gives it). Every configuration
    of a study is taken in turn as the starting point c; an algorithm's gain
    from c is 1 − min(t_c, t_found)/t_c, and its share in a study is the sum
    of its gains over the sum of exhaustive search's (Σ Z(c)). Random search
    with N = ⌈f·M⌉ trials (M the study's size) draws without replacement
    from all M configurations (exact expectation); the heuristic tries the
    one configuration :func:`heuristic_choice` picks. Rows: one per study;
    columns ``configurations``, ``exhaustive`` (1 by definition),
    ``heuristic`` and ``random_f{f}`` per fraction of :data:`TRIAL_FRACTIONS`.
    """
    rows = []
    studies = []
    for study, group in frame.groupby(STUDY, sort=True):
        studies.append(study)
        seconds = group[ITERATION_SECONDS].to_numpy(dtype=np.float64)
        m = len(seconds)
        exhaustive = 1.0 - seconds.min() / seconds
        total = exhaustive.sum()
        picked = seconds[group.index.get_loc(heuristic_choice(group))]
        heuristic = 1.0 - np.minimum(seconds, picked) / seconds
        entry: dict[str, float] = {
            "configurations": float(m),
            "exhaustive": 1.0 if total > 0 else math.nan,
            "heuristic": float(heuristic.sum() / total) if total > 0 else math.nan,
        }
        for f in TRIAL_FRACTIONS:
            gains = _random_gains(seconds, max(1, math.ceil(f * m)))
            entry[f"random_f{f:g}"] = float(gains.sum() / total) if total > 0 else math.nan
        rows.append(entry)
    out = pd.DataFrame(rows)
    out.insert(0, STUDY, np.asarray(studies, dtype=np.int64))
    return out.astype({"configurations": np.int64})


def default_capture_shares(shares: pd.DataFrame) -> dict[str, Any]:
    """Measured capture shares of the default algorithms and how each is derived.

    heuristic: the named heuristic's mean share over studies; black-box:
    random search at the defaults' trial ratio N_black-box / N_exhaustive
    (a lower bound, since a model-based optimizer beats random draws);
    exhaustive: 1 by definition.
    """
    fraction = BLACK_BOX_TRIAL_FRACTION
    studies = len(shares)
    random_share = float(shares[f"random_f{fraction:g}"].mean())
    return {
        "about": (
            "Share of the exhaustive search's gain each default algorithm captures, measured on the "
            f"{studies} vTrain studies (A100, measured iteration times): mean over studies of "
            "sum over starting configurations c of gain(c) / sum of Z(c)."
        ),
        "shares": {
            "heuristic": {
                "share": round(float(shares["heuristic"].mean()), 4),
                "derived": f"one trial of the named heuristic: {HEURISTIC_NAME}",
            },
            "black-box": {
                "share": round(random_share, 4),
                "derived": (
                    f"random search with N/M = {fraction:g} of the study (the defaults' trial ratio "
                    f"{ALGORITHMS_BY_NAME['black-box'].trials}/{ALGORITHMS_BY_NAME['exhaustive'].trials}), "
                    "exact expectation; a lower bound for a model-based optimizer such as TPE"
                ),
            },
            "exhaustive": {
                "share": 1.0,
                "derived": "exhaustive search finds the study's best: 1 by definition",
            },
        },
        "random_search_by_trial_fraction": {
            f"{f:g}": round(float(shares[f"random_f{f:g}"].mean()), 4) for f in TRIAL_FRACTIONS
        },
    }


# --- the whole evaluation --------------------------------------------------------


#: Simulated rows held out whole (the model fitted on every other row): where no measured row lies.
HOPPER_GPUS: Final = ("h100-sxm", "h200")
HELD_OUT_GROUPS: Final = {
    SIMULATED_SEVERAL_NODES: lambda rows: rows[SET] == SIMULATED_SEVERAL_NODES,
    "simulated, H100 and H200": lambda rows: (
        rows[GPU_MODEL].isin(HOPPER_GPUS) & (rows[LABEL_SOURCE] == SIMULATED)
    ),
}
#: Methods scored on simulated labels: the performance model's own Z is their label, so it is left out.
SIMULATED_METHODS: Final = tuple(m for m in METHODS if m != "perfmodel")


@dataclass(frozen=True)
class Evaluation:
    """What ``zest evaluate`` reports: measured and simulated labels scored apart, never together."""

    table: pd.DataFrame  # measured rows: one row per method (see score)
    decisions: pd.DataFrame  # zest's interval verdicts per R, measured rows
    capture_shares: pd.DataFrame  # per measured study (see capture_share_table)
    predictions: pd.DataFrame  # every row, cross-validated
    coverage: float
    rows: int  # measured rows and studies
    studies: int
    folds: int
    simulated: pd.DataFrame  # simulated rows, per set and method (see score_sets); empty without them
    held_out_sets: pd.DataFrame  # per group of HELD_OUT_GROUPS held out whole; empty without them
    training_rows: int  # every row the model learns from, measured and simulated
    training_studies: int


def score_sets(predictions: pd.DataFrame, methods: Sequence[str] = SIMULATED_METHODS) -> pd.DataFrame:
    """MAE, Spearman within studies and coverage of ``methods`` in each set of ``predictions``."""
    entries = []
    for name, group in predictions.groupby(SET, sort=True):
        for method in methods:
            entries.append(
                {
                    "set": str(name),
                    "rows": len(group),
                    "studies": int(group[STUDY].nunique()),
                    "method": METHODS[method],
                    **accuracy(group, method),
                    "width_median_pp": float((group[HIGH] - group[LOW]).median())
                    if method == ZEST
                    else math.nan,
                }
            )
    return pd.DataFrame(entries)


def held_out_groups(rows: pd.DataFrame, make_model: Callable[[], ZeRegressor] = ZeRegressor) -> pd.DataFrame:
    """Each group of :data:`HELD_OUT_GROUPS` held out whole: the model fitted on every other row (measured
    and simulated), its MAE, coverage and interval width there, beside its cross-validated width."""
    X = rows[list(MODEL_FEATURES)]
    entries = []
    for name, select in HELD_OUT_GROUPS.items():
        out = select(rows).to_numpy()
        if not out.any() or out.all():
            continue
        model = make_model().fit(
            X[~out],
            rows.loc[~out, Z_PERCENT],
            groups=rows.loc[~out, STUDY],
            sample_weight=row_weights(rows[~out]),
        )
        low, mid, high = model.predict_interval(X[out])
        truth = rows.loc[out, Z_PERCENT].to_numpy()
        entries.append(
            {
                "group": name,
                "rows": int(out.sum()),
                "studies": int(rows.loc[out, STUDY].nunique()),
                "mae_pp": float(np.abs(mid - truth).mean()),
                "coverage_ratio": float(((low <= truth) & (truth <= high)).mean()),
                "width_median_pp": float(np.median(high - low)),
            }
        )
    return pd.DataFrame(entries)


def evaluate(
    data: StudyData,
    rows: pd.DataFrame,
    *,
    folds: int = FOLDS,
    make_model: Callable[[], ZeRegressor] = ZeRegressor,
) -> Evaluation:
    """Grouped cross-validation of zest and the baselines on every row, scored apart on measured and on
    simulated labels; simulated groups held out whole; the measured capture shares."""
    measured = (rows[LABEL_SOURCE] == MEASURED).to_numpy()
    mine = rows[measured]
    if len(mine) != len(data.frame) or not np.array_equal(mine[STUDY], data.frame[STUDY]):
        raise ValueError("training rows and measured data do not match row for row; rebuild the rows")
    perfmodel_z = pd.Series(np.nan, index=rows.index)
    perfmodel_z[measured] = perfmodel_z_percent(data).to_numpy()
    predictions = cross_validated_predictions(rows, perfmodel_z, folds=folds, make_model=make_model)
    table, decisions = score(predictions[measured])
    simulated = ~measured
    return Evaluation(
        table=table,
        decisions=decisions,
        capture_shares=capture_share_table(data.frame),
        predictions=predictions,
        coverage=float(make_model().coverage),
        rows=len(mine),
        studies=int(mine[STUDY].nunique()),
        folds=min(folds, int(rows[STUDY].nunique())),
        simulated=score_sets(predictions[simulated]) if simulated.any() else pd.DataFrame(),
        held_out_sets=held_out_groups(rows, make_model) if simulated.any() else pd.DataFrame(),
        training_rows=len(rows),
        training_studies=int(rows[STUDY].nunique()),
    )


def fmt_number(value: float, digits: int = 2) -> str:
    """A figure of the card's tables: ``digits`` decimals, n/a for NaN."""
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_percent(value: float) -> str:
    """A ratio of the card's tables as a percentage, n/a for NaN."""
    return "n/a" if not math.isfinite(value) else f"{100 * value:.1f} %"


def render_markdown(evaluation: Evaluation) -> str:
    """The evaluation section of the model card (Markdown, no markers)."""
    t = evaluation.table
    reuse_heads = " | ".join(f"verdict agrees, R = {r}" for r in REUSES)
    simulated_rows = evaluation.training_rows - evaluation.rows
    lines = [
        f"Cross-validation grouped by study ({evaluation.folds} folds, `GroupKFold`) over every row the "
        f"model learns from: {evaluation.training_rows} configurations in "
        f"{evaluation.training_studies} studies, "
        f"{evaluation.rows} of them with measured labels and {simulated_rows} with simulated ones, scored "
        "apart (never one figure over both).",
        "",
        f"**Measured labels** (vTrain, one node): {evaluation.rows} "
        f"configurations in {evaluation.studies} studies, labels measured, features simulated. "
        f"Interval: {100 * evaluation.coverage:.0f} % stated coverage. Verdicts: break-even of exhaustive "
        f"search over the row's own study (N = the study's size, t = {DEFAULT_TRIAL_MINUTES:g} min, "
        f"T = {DURATION_HOURS:g} h, no engineering cost) at the predicted Z (mid) versus at the measured Z.",
        "",
        f"| method | MAE (pp) | Spearman within studies (median) | interval coverage | {reuse_heads} |",
        "|---|---:|---:|---:|" + "---:|" * len(REUSES),
    ]
    for _, row in t.iterrows():
        agreements = " | ".join(fmt_percent(row[f"verdict_agreement_r{r}"]) for r in REUSES)
        lines.append(
            f"| {row['method']} | {fmt_number(row['mae_pp'])} | {fmt_number(row['spearman_median'], 3)} | "
            f"{fmt_percent(row['coverage_ratio'])} | {agreements} |"
        )
    lines += ["", _comparison(evaluation)]
    lines += [
        "",
        "zest's interval verdicts (proceed / marginal / does-not-pay from low, mid and high):",
        "",
        "| R | agree | marginal | decisively wrong | measured Z says proceed |",
        "|---:|---:|---:|---:|---:|",
    ]
    for _, row in evaluation.decisions.iterrows():
        lines.append(
            f"| {int(row['reuse'])} | {fmt_percent(row['agree_ratio'])} | "
            f"{fmt_percent(row['marginal_ratio'])} | {fmt_percent(row['wrong_ratio'])} | "
            f"{fmt_percent(row['truth_proceed_ratio'])} |"
        )
    lines += _simulated_markdown(evaluation)
    shares = evaluation.capture_shares
    fractions = " | ".join(f"N = {f:g}·M" for f in TRIAL_FRACTIONS)
    lines += [
        "",
        f"Capture shares measured on the {len(shares)} studies (share of the exhaustive search's gain, "
        "mean over studies; every configuration taken in turn as the start; random search: exact "
        "expectation of the best of N draws without replacement; M = the study's size, "
        f"median {shares['configurations'].median():g}):",
        "",
        f"| heuristic (1 trial) | {fractions} |",
        "|---:|" + "---:|" * len(TRIAL_FRACTIONS),
        f"| {shares['heuristic'].mean():.2f} | "
        + " | ".join(f"{shares[f'random_f{f:g}'].mean():.2f}" for f in TRIAL_FRACTIONS)
        + " |",
        "",
        f"Heuristic: {HEURISTIC_NAME}.",
    ]
    return "\n".join(lines)


def _simulated_markdown(evaluation: Evaluation) -> list[str]:
    """The simulated labels' tables: cross-validated per set, and groups held out whole."""
    if evaluation.simulated.empty:
        return []
    lines = [
        "",
        "**Simulated labels** (the performance model's studies, `estimator/training/simulated.py`: A100, "
        "H100 and H200, 1-512 GPUs, Megatron 3D layouts and FSDP, each study a job and the configurations a "
        "person would measure). These figures say how well the model learns the performance model's view, "
        "not how right that view is; they are not comparable with the measured ones, and the performance "
        "model's own Z is their label, so it is no baseline here.",
        "",
        "| set | rows | studies | method | MAE (pp) | Spearman within studies (median) | interval coverage "
        "| interval width (median, pp) |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for _, row in evaluation.simulated.iterrows():
        lines.append(
            f"| {row['set']} | {row['rows']} | {row['studies']} | {row['method']} | "
            f"{fmt_number(row['mae_pp'])} | {fmt_number(row['spearman_median'], 3)} | "
            f"{fmt_percent(row['coverage_ratio'])} | {fmt_number(row['width_median_pp'], 1)} |"
        )
    held = evaluation.held_out_sets
    if not held.empty:
        lines += [
            "",
            "Simulated groups held out whole (the model fitted on every other row, measured and simulated): "
            "how the interval does on jobs unlike any it learned from. It widens with the job's distance "
            "from the training rows.",
            "",
            "| held out | rows | studies | MAE (pp) | interval coverage | interval width (median, pp) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for _, row in held.iterrows():
            lines.append(
                f"| {row['group']} | {row['rows']} | {row['studies']} | {fmt_number(row['mae_pp'])} | "
                f"{fmt_percent(row['coverage_ratio'])} | {fmt_number(row['width_median_pp'], 1)} |"
            )
    return lines


def _comparison(evaluation: Evaluation) -> str:
    """One sentence per baseline: where zest beats it and where it does not (MAE, Spearman, verdicts)."""
    table = evaluation.table.set_index("method")
    zest = table.loc[METHODS[ZEST]].to_dict()
    sentences = []
    for method, label in METHODS.items():
        if method == ZEST:
            continue
        other = table.loc[label].to_dict()
        better: list[str] = []
        not_better: list[str] = []
        mae = f"MAE {zest['mae_pp']:.2f} vs {other['mae_pp']:.2f} pp"
        (better if zest["mae_pp"] < other["mae_pp"] else not_better).append(mae)
        if math.isfinite(other["spearman_median"]):
            rho = f"Spearman {zest['spearman_median']:.3f} vs {other['spearman_median']:.3f}"
            (better if zest["spearman_median"] > other["spearman_median"] else not_better).append(rho)
        for r in REUSES:
            key = f"verdict_agreement_r{r}"
            agree = f"verdict agreement at R = {r} ({fmt_percent(zest[key])} vs {fmt_percent(other[key])})"
            (better if zest[key] > other[key] else not_better).append(agree)
        sentence = f"Against “{label}”: zest is better on {', '.join(better) or 'nothing'}"
        if not_better:
            sentence += f"; it is not better on {', '.join(not_better)}"
        sentences.append(sentence + ".")
    coverage = zest["coverage_ratio"]
    judged = "conservative" if coverage >= evaluation.coverage else "too narrow"
    sentences.append(
        f"The interval covers {fmt_percent(coverage)} of held-out rows against "
        f"{100 * evaluation.coverage:.0f} % stated ({judged})."
    )
    return " ".join(sentences)


def update_card(card: str, section: str, *, begin: str = CARD_BEGIN, end: str = CARD_END) -> str:
    """``card`` with the text between the markers ``begin`` and ``end`` (default: the evaluation section's,
    :data:`CARD_BEGIN` and :data:`CARD_END`) replaced by ``section``.

    Raises ``ValueError`` when the markers are missing or out of order.
    """
    first, last = card.find(begin), card.find(end)
    if first < 0 or last < first:
        raise ValueError(f"the model card lacks the markers {begin} ... {end}")
    return card[: first + len(begin)] + "\n" + section.strip("\n") + "\n" + card[last:]
