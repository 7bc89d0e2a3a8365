"""What recorded tuning studies say: measured Z per trial, learning curves, capture shares, paid-off checks,
and the search ledger (what each search spent).

Pure: the frames of :class:`collectors.studies.store.OutcomeStore` in, DataFrames
and dicts out. Within a study, trial c's measured improvement is
Z(c) = 100 · (1 − t_best / t_c) for a time objective and
100 · (1 − v_c / v_best) for a throughput (so for an improvement rate k over
the default, Z = 100 · (1 − 1/k)). The study's first finished trial is the
job's default; the study's measured Z is Z(default). The break-even check
looking back uses :mod:`estimator.decision.breakeven`'s formulas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import pandas as pd

from estimator.decision.algorithms import ALGORITHMS_BY_NAME
from estimator.decision.breakeven import exploration_hours, gain_percent, r_explore, total_speedup_hours
from estimator.features.extract import FEATURES, GPU_COUNT
from estimator.training.rows import STUDY, Z_PERCENT

__all__ = [
    "LEDGER_COLUMNS",
    "MIN_CURVE_STUDIES",
    "curve_capture_shares",
    "history",
    "learning_curves",
    "local_rows",
    "search_ledger",
    "trial_z_percent",
]

COMPLETE: Final = "COMPLETE"
#: Studies with a learning curve (a default, and a best better than it) needed before their curves replace
#: the shipped black-box capture share: fewer say more about the studies than about the cluster.
MIN_CURVE_STUDIES: Final = 5
#: The black-box default's budget relative to the exhaustive default's: where on a curve its share is read.
BLACK_BOX_FRACTION: Final = ALGORITHMS_BY_NAME["black-box"].trials / ALGORITHMS_BY_NAME["exhaustive"].trials
CURVE_FRACTIONS: Final = (0.1, 0.25, 0.5, 0.75, 1.0)
SECONDS_PER_HOUR: Final = 3600.0


def trial_z_percent(values: pd.Series, objective: str) -> pd.Series:
    """Z(c) in % of each value against the best of ``values`` (NaN stays NaN): time or throughput."""
    if objective == "time":
        return 100.0 * (1.0 - values.min() / values)
    if objective == "throughput":
        return 100.0 * (1.0 - values / values.max())
    raise ValueError(f"objective must be throughput or time, got {objective!r}")


def _with_z(studies: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with Z_PERCENT (COMPLETE trials; NaN otherwise), per study."""
    objective = studies.set_index("study_id")["objective"]
    out = trials.copy()
    out[Z_PERCENT] = np.nan
    complete = out["state"].eq(COMPLETE) & out["value"].notna()
    for study_id, group in out[complete].groupby("study_id"):
        out.loc[group.index, Z_PERCENT] = trial_z_percent(group["value"], str(objective[study_id]))
    return out


def local_rows(studies: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Training rows from the store: features (:data:`FEATURES`), STUDY (store id) and Z_PERCENT.

    One row per COMPLETE trial with telemetry; a feature stored as null is NaN.
    """
    scored = _with_z(studies, trials)
    usable = scored[scored[Z_PERCENT].notna() & scored["features"].notna()]
    values = [[np.nan if f.get(name) is None else f[name] for name in FEATURES] for f in usable["features"]]
    rows = pd.DataFrame(values, columns=list(FEATURES), dtype=np.float64)
    rows[STUDY] = usable["study_id"].to_numpy(dtype=np.int64)
    rows[Z_PERCENT] = usable[Z_PERCENT].to_numpy(dtype=np.float64)
    return rows


def learning_curves(studies: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Each study's best-so-far curve: the improvement over the default found after n trials.

    Trials count in number order, FAIL and PRUNED ones included (they cost
    their time). Columns: ``study_id``, ``trials`` (n), ``found_percent``
    (100 · (1 − t_best-so-far / t_default), time-like), ``share`` (of the
    study's final improvement; NaN when the study found none).
    """
    objective = studies.set_index("study_id")["objective"]
    parts = []
    for study_id, group in trials.sort_values(["study_id", "number"]).groupby("study_id", sort=True):
        values = group["value"].where(group["state"].eq(COMPLETE)).to_numpy(dtype=np.float64)
        if np.isnan(values).all():
            continue
        first = int(np.flatnonzero(~np.isnan(values))[0])
        # time-like: for throughput the time per unit of work is 1/v
        seconds = values if objective[study_id] == "time" else 1.0 / values
        best = pd.Series(seconds[first:]).cummin().to_numpy()
        found = gain_percent(best, seconds[first])
        final = found[-1]
        parts.append(
            pd.DataFrame(
                {
                    "study_id": np.full(len(found), group["study_id"].iloc[0], dtype=np.int64),
                    "trials": np.arange(first + 1, len(values) + 1, dtype=np.int64),
                    "found_percent": found,
                    "share": found / final if final > 0 else np.nan,
                }
            )
        )
    if not parts:
        return pd.DataFrame(
            {"study_id": pd.Series(dtype="int64"), "trials": pd.Series(dtype="int64"),
             "found_percent": pd.Series(dtype="float64"), "share": pd.Series(dtype="float64")}
        )  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def _share_at(curve: pd.DataFrame, fraction: float) -> float:
    """The share found after ⌈fraction · M⌉ trials of a study of M trials."""
    m = int(curve["trials"].max())
    n = max(1, math.ceil(fraction * m))
    reached = curve[curve["trials"] <= n]
    return float(reached["share"].iloc[-1]) if not reached.empty else 0.0


def curve_capture_shares(curves: pd.DataFrame, shipped: Mapping[str, Any]) -> dict[str, Any] | None:
    """Capture shares in the shape of the model metadata, from at least :data:`MIN_CURVE_STUDIES` curves.

    ``shipped``: the shipped model's ``capture_shares`` metadata. The
    black-box share becomes the mean over studies of the share a real
    optimizer had found after the defaults' trial ratio (N_black-box /
    N_exhaustive) of its trials; exhaustive stays 1; the heuristic, which
    the curves do not measure, keeps the shipped share. None when fewer
    studies found an improvement.
    """
    found = curves.dropna(subset=["share"])
    study_ids = sorted(found["study_id"].unique())
    if len(study_ids) < MIN_CURVE_STUDIES:
        return None
    by_study = {s: found[found["study_id"] == s] for s in study_ids}
    by_fraction = {
        f"{f:g}": round(float(np.mean([_share_at(c, f) for c in by_study.values()])), 4)
        for f in sorted({*CURVE_FRACTIONS, BLACK_BOX_FRACTION})
    }
    shares = {str(k): dict(v) for k, v in shipped.get("shares", {}).items()}
    shares["black-box"] = {
        "share": by_fraction[f"{BLACK_BOX_FRACTION:g}"],
        "derived": (
            f"recorded learning curves of {len(study_ids)} local tuning studies: mean share of the study's "
            f"final improvement found after N/M = {BLACK_BOX_FRACTION:g} of its trials (the defaults' "
            "trial ratio), the first trial being the default"
        ),
    }
    shares.setdefault("exhaustive", {"share": 1.0, "derived": "finds the study's best: 1 by definition"})
    return {
        "about": (
            f"Share of the thorough search's gain each default algorithm captures; black-box measured on "
            f"{len(study_ids)} local tuning studies (zest record), the rest as shipped."
        ),
        "shares": shares,
        "learning_curve_by_trial_fraction": by_fraction,
        "studies": len(study_ids),
    }


def history(studies: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per recorded study: T, N, t, measured Z, reuse so far, and whether the tuning paid off.

    N counts every finished trial (FAIL and PRUNED cost their time); t is
    their mean duration in hours. Reuse R is the given count, else the runs
    recorded with ``--reused-by``. Paid off: the time saved over R runs,
    ``R · T · Z/100``, exceeds the exploration ``N · t`` (per GPU, no
    engineering cost), i.e. R > R_explore; None when T is unknown.
    """
    scored = _with_z(studies, trials)
    rows = []
    for _, study in studies.iterrows():
        own = scored[scored["study_id"] == study["study_id"]].sort_values("number")
        complete = own[own["state"].eq(COMPLETE) & own[Z_PERCENT].notna()]
        n = len(own)
        durations = own["duration_seconds"].dropna()
        t_hours = float(durations.mean()) / SECONDS_PER_HOUR if not durations.empty else math.nan
        z = float(complete[Z_PERCENT].iloc[0]) if not complete.empty else math.nan
        given = study["reuse"]
        reuse = float(given) if pd.notna(given) else float(study["recorded_runs"])
        duration = float(study["duration_hours"]) if pd.notna(study["duration_hours"]) else math.nan
        known = all(math.isfinite(v) for v in (duration, t_hours, z))
        r_break = r_explore(n, t_hours, duration, z) if known else math.nan
        saved = total_speedup_hours(duration, z, reuse) if known else math.nan
        spent = exploration_hours(n, t_hours) if math.isfinite(t_hours) else math.nan
        rows.append(
            {
                "study": study["name"],
                "objective": study["objective"],
                "duration_hours": duration,
                "trials": n,
                "complete": len(complete),
                "failed": int(own["state"].eq("FAIL").sum()),
                "pruned": int(own["state"].eq("PRUNED").sum()),
                "trial_hours": t_hours,
                "z_percent": z,
                "reuse": reuse,
                "reuse_from": "given" if pd.notna(given) else "recorded runs",
                "with_telemetry": int(own["features"].notna().sum()),
                "r_break": r_break,
                "saved_hours": saved,
                "exploration_hours": spent,
                "net_hours": saved - spent if known else math.nan,
                "paid_off": (saved > spent) if known else None,
            }
        )
    return pd.DataFrame(rows)


#: The ledger's columns, one row per study (:func:`search_ledger`).
LEDGER_COLUMNS: Final = (
    "gpus",
    "gpus_from",
    "trial_hours_spent",
    "gpu_hours_spent",
    "failed_share",
    "pruned_share",
    "cost_vs_one_run",
    "untimed_trials",
    "ledger_notes",
)


def _trial_gpus(features: Any) -> float:
    """The GPUs a trial's telemetry counted (the ``gpus`` feature); NaN without telemetry."""
    if not isinstance(features, dict) or features.get(GPU_COUNT) is None:
        return math.nan
    count = float(features[GPU_COUNT])
    return count if math.isfinite(count) and count > 0 else math.nan


def search_ledger(studies: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """What each study's search spent, one row per row of ``studies`` (same index): :data:`LEDGER_COLUMNS`.

    ``studies`` and ``trials`` as :class:`collectors.studies.store.OutcomeStore` gives them (``gpus`` and
    ``duration_hours`` may be filled from the command line first). Over the study's finished trials
    (COMPLETE, FAIL, PRUNED; a trial without start and end is counted in ``untimed_trials``, not in the
    hours): ``trial_hours_spent`` = Σ duration (h); ``gpu_hours_spent`` = Σ duration · GPUs, a trial's
    GPUs those its telemetry counted, else the study's G (NaN when some trial has neither);
    ``failed_share`` and ``pruned_share`` of the finished trials; ``cost_vs_one_run`` =
    gpu_hours_spent / (G · T), or, G unknown and no trial counting its own GPUs, trial_hours_spent / T
    (every trial on the job's G GPUs: G cancels); NaN without T. ``ledger_notes`` say why a figure is
    missing, or what it assumed.
    """
    rows = []
    for _, study in studies.iterrows():
        own = trials[trials["study_id"] == study["study_id"]]
        n = len(own)
        timed = own[own["duration_seconds"].notna()]
        hours = timed["duration_seconds"].to_numpy(dtype=float) / SECONDS_PER_HOUR
        counted = [_trial_gpus(f) for f in timed["features"]]
        g = float(study["gpus"]) if pd.notna(study["gpus"]) else math.nan
        per_trial = [c if math.isfinite(c) else g for c in counted]
        trial_hours = float(hours.sum())
        known = all(math.isfinite(c) for c in per_trial)
        gpu_hours = float(sum(h * c for h, c in zip(hours, per_trial, strict=True))) if known else math.nan
        t = float(study["duration_hours"]) if pd.notna(study["duration_hours"]) else math.nan
        notes = []
        if n > len(timed):
            notes.append(f"{n - len(timed)} trial(s) without start and end are not in the hours")
        own_counts = sum(math.isfinite(c) for c in counted)
        if not math.isfinite(g):
            if known:  # every trial counted its GPUs
                notes.append("G not recorded: the GPU-hours count each trial's GPUs from its telemetry")
            else:
                notes.append(
                    "G not recorded: GPU-hours unknown, trial-hours shown (record with --gpus G, or give "
                    "history --gpus G)"
                )
        cost = math.nan
        if not math.isfinite(t):
            notes.append(
                "no T: no cost against one run (record with --duration-hours T, or give history "
                "--duration-hours T)"
            )
        elif math.isfinite(g):
            cost = gpu_hours / (g * t)
        elif own_counts == 0:
            cost = trial_hours / t
            notes.append("cost against one run = trial-hours / T: every trial taken on the job's G GPUs")
        else:
            notes.append("G not recorded and some trials counted their own GPUs: no cost against one run")
        rows.append(
            {
                "gpus": g,
                "gpus_from": None if not math.isfinite(g) else str(study.get("gpus_from", "recorded")),
                "trial_hours_spent": trial_hours,
                "gpu_hours_spent": gpu_hours,
                "failed_share": own["state"].eq("FAIL").sum() / n if n else math.nan,
                "pruned_share": own["state"].eq("PRUNED").sum() / n if n else math.nan,
                "cost_vs_one_run": cost,
                "untimed_trials": n - len(timed),
                "ledger_notes": notes,
            }
        )
    return pd.DataFrame(rows, index=studies.index, columns=list(LEDGER_COLUMNS))
