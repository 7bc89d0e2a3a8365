"""How well the performance model ranks a job's configurations, measured on vTrain's held-out studies.

``zest whatif`` ranks configurations by predicted iteration time; this is the
check that the ranking picks well. Each vTrain row is predicted by the
constants of :func:`estimator.perfmodel.calibration.grouped_cross_validation`,
fitted without any row of its model shape, so every study (the rows sharing
# GPUs, global batch, hidden size, heads, layers and sequence length) is held
out whole. Within each study the configurations are ranked by predicted time;
the figures are the *measured* time of the top-1 pick against the study's
measured best, 100·(t_top1 / t_best − 1) in %, and how often the measured best
is among the top 3 picks::

    python models/calibrate_perfmodel.py --ranking
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from estimator.perfmodel.calibration import GROUP_KEYS, MEASURED

__all__ = ["RankingCheck", "ranking_check", "ranking_markdown", "study_picks"]

#: The top-k whose hit rate is reported.
TOP_K = 3


def study_picks(vtrain: pd.DataFrame, predicted_seconds: np.ndarray) -> pd.DataFrame:
    """One row per vTrain study: its size, the top-1 pick's measured regret (%) and whether the top 3 hold
    the measured best. ``vtrain`` is the measured table, ``predicted_seconds`` each row's predicted time.

    Columns: ``configurations``, ``top1_regret_percent`` = 100·(t_measured(top-1) / t_best − 1),
    ``top3_holds_best`` and ``random_regret_percent`` (the mean over the study's configurations: what a
    pick at random costs, for scale). Ties in prediction go to the row that comes first in the table.
    """
    if len(predicted_seconds) != len(vtrain):
        raise ValueError(f"{len(predicted_seconds)} predictions for {len(vtrain)} rows")
    frame = vtrain.assign(_pred=np.asarray(predicted_seconds, dtype=float), _meas=vtrain[MEASURED] / 1000.0)
    out = []
    for _, study in frame.groupby(list(GROUP_KEYS), sort=True):
        order = study.sort_values("_pred", kind="stable")
        best = float(study["_meas"].min())
        top = order["_meas"].to_numpy()
        out.append(
            {
                "configurations": len(study),
                "top1_regret_percent": 100.0 * (top[0] / best - 1.0),
                "top3_holds_best": bool(np.min(top[:TOP_K]) == best),
                "random_regret_percent": float(100.0 * (study["_meas"].mean() / best - 1.0)),
            }
        )
    return pd.DataFrame(out)


@dataclass(frozen=True)
class RankingCheck:
    """The figures of :func:`study_picks` over the studies (all, and those of more than 3 configurations)."""

    studies: int
    top1_regret_median_percent: float
    top1_regret_p90_percent: float
    top1_is_best_ratio: float
    top3_holds_best_ratio: float
    larger_studies: int  # studies of more than TOP_K configurations, where the top 3 are a real choice
    larger_top3_holds_best_ratio: float
    larger_top1_regret_median_percent: float
    larger_top1_regret_p90_percent: float
    random_regret_median_percent: float


def ranking_check(picks: pd.DataFrame) -> RankingCheck:
    """The summary of :func:`study_picks`' table."""
    regret = picks["top1_regret_percent"]
    larger = picks[picks["configurations"] > TOP_K]
    return RankingCheck(
        studies=len(picks),
        top1_regret_median_percent=float(regret.median()),
        top1_regret_p90_percent=float(np.percentile(regret, 90)),
        top1_is_best_ratio=float((regret <= 0).mean()),
        top3_holds_best_ratio=float(picks["top3_holds_best"].mean()),
        larger_studies=len(larger),
        larger_top3_holds_best_ratio=float(larger["top3_holds_best"].mean()),
        larger_top1_regret_median_percent=float(larger["top1_regret_percent"].median()),
        larger_top1_regret_p90_percent=float(np.percentile(larger["top1_regret_percent"], 90)),
        random_regret_median_percent=float(picks["random_regret_percent"].median()),
    )


def ranking_markdown(held_out: RankingCheck, in_sample: RankingCheck | None = None) -> str:
    """The card's table: held-out figures (and the shipped constants' in-sample ones, for comparison)."""
    rows = [("held out (constants refitted without the study's model shape)", held_out)]
    if in_sample is not None:
        rows.append(("in sample (the shipped constants, fitted on every study)", in_sample))
    lines = [
        "| constants | studies | top-1 measured vs best: median | p90 | top-1 is the best "
        "| top 3 hold the best "
        f"| studies of > {TOP_K} configurations: top 3 hold the best | their top-1 median / p90 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in rows:
        lines.append(
            f"| {name} | {c.studies} | +{c.top1_regret_median_percent:.1f} % "
            f"| +{c.top1_regret_p90_percent:.1f} % "
            f"| {c.top1_is_best_ratio:.0%} | {c.top3_holds_best_ratio:.0%} "
            f"| {c.larger_top3_holds_best_ratio:.0%} ({c.larger_studies}) "
            f"| +{c.larger_top1_regret_median_percent:.1f} % / +{c.larger_top1_regret_p90_percent:.1f} % |"
        )
    lines.append("")
    lines.append(
        f"A configuration picked at random costs a median +{held_out.random_regret_median_percent:.1f} % "
        "over the study's best (mean over its configurations), for scale."
    )
    return "\n".join(lines) + "\n"
