"""Two estimators, one answer: the telemetry's Z_e and the performance model's search of the job's layouts.

When a job's configuration is known (``estimate-z --spec``), the performance
model ranks every layout of it (:func:`estimator.perfmodel.search.search_ranked`,
what ``zest whatif`` shows). The decision then uses each number where it is
worth most:

* the heuristic algorithm becomes "try the model's top :data:`TOP_K`": N = K
  trials, Z = the predicted gain of the best of them over the job's own layout,
  with an interval from the model's held-out error of iteration time on that
  GPU type (both times off by it, in opposite directions), widened by how far
  the job's telemetry is from what the model predicts for its spec;
* black-box and exhaustive search keep the telemetry's Z_e, whose labels are
  measured tuning outcomes; without telemetry they take the search's
  whole-space Z with the same interval.

The output says so (:func:`reconcile_note`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import pandas as pd

from estimator.decision.algorithms import AlgorithmChoice
from estimator.decision.breakeven import ZInterval, gain_percent
from estimator.features.extract import job_features, ratio_feature, summarize_gpus
from estimator.model.compiled import clip_z
from estimator.perfmodel import iteration as perfmodel
from estimator.perfmodel.iteration import JobSpec, PerfConstants
from estimator.perfmodel.search import Ranked, describe_layout, held_out_error, search_ranked

__all__ = [
    "GAP_SIGNALS",
    "TOP_K",
    "SearchAnswer",
    "reconcile_note",
    "search_answer",
    "takes_search",
    "with_search",
    "with_telemetry",
]

#: Configurations the heuristic tries: the model's top 3 hold a held-out vTrain study's best measured
#: configuration in 88 % of studies (models/README.md, "Ranking configurations: measured").
TOP_K: Final = 3
#: Held-out error assumed for a GPU type the constants file gives none for, in %.
FALLBACK_ERROR_PERCENT: Final = 15.0
#: The telemetry signals compared with the model's prediction for the spec (means over the job's GPUs).
GAP_SIGNALS: Final = ("sm_active_ratio", "tensor_active_ratio")
#: Minutes of telemetry simulated for the comparison.
GAP_MINUTES: Final = 1.0
_START: Final = pd.Timestamp("2026-01-01T00:00:00Z")


@dataclass(frozen=True)
class SearchAnswer:
    """What the performance model's search says about one job: predicted, not measured."""

    spec: JobSpec
    spec_seconds: float
    top: tuple[Ranked, ...]  # the best TOP_K configurations, fastest first
    configurations: int  # configurations searched
    error_percent: float  # the held-out error of iteration time used for the interval
    gap_percent: float = 0.0  # how far the job's telemetry is from the model's prediction for its spec
    gap_note: str | None = None

    @property
    def uncertainty(self) -> float:
        """Relative error of one predicted time: the held-out error and the telemetry's gap, as a ratio."""
        return min(0.9, (self.error_percent + self.gap_percent) / 100.0)

    @property
    def z_percent(self) -> ZInterval:
        """Z of the best of the top configurations over the job's layout, with its uncertainty."""
        best, own, m = self.best_seconds, self.spec_seconds, self.uncertainty
        low, mid, high = (
            float(z)
            for z in clip_z(
                np.array(
                    [
                        gain_percent(best * (1 + m), own * (1 - m)),
                        gain_percent(best, own),
                        gain_percent(best * (1 - m), own * (1 + m)),
                    ]
                )
            )
        )
        return ZInterval(min(low, mid), mid, max(high, mid))

    @property
    def best_seconds(self) -> float:
        return self.top[0].iteration_seconds if self.top else self.spec_seconds

    def document(self) -> dict[str, object]:
        """The JSON form (``estimate-z``'s ``whole_space``)."""
        z = self.z_percent
        best = self.top[0].spec if self.top else self.spec
        return {
            "configurations": self.configurations,
            "layout": describe_layout(self.spec),
            "iteration_seconds": self.spec_seconds,
            "best_layout": describe_layout(best),
            "best_iteration_seconds": self.best_seconds,
            "speedup": self.spec_seconds / self.best_seconds,
            "z_percent": z.mid,
            "z_percent_interval": {"low": z.low, "mid": z.mid, "high": z.high},
            "top": [
                {"layout": describe_layout(r.spec), "iteration_seconds": r.iteration_seconds}
                for r in self.top
            ],
            "error_percent": self.error_percent,
            "telemetry_gap_percent": self.gap_percent,
            "source": "zest's performance model: predicted, not measured",
        }


def search_answer(spec: JobSpec, constants: PerfConstants, *, top_k: int = TOP_K) -> SearchAnswer:
    """The model's ranking of ``spec``'s job and its held-out error on the job's GPU type."""
    order = search_ranked(spec, constants)
    error = held_out_error(spec.gpu)
    return SearchAnswer(
        spec=spec,
        spec_seconds=perfmodel.iteration_seconds(spec, constants),
        top=tuple(order[:top_k]),
        configurations=len(order),
        error_percent=FALLBACK_ERROR_PERCENT if error is None else error.mape_percent,
    )


def with_telemetry(
    answer: SearchAnswer, constants: PerfConstants, features: Mapping[str, float]
) -> SearchAnswer:
    """``answer`` checked against the job's telemetry: the model's simulated SM and tensor activity for the
    spec against the measured ones; their largest relative gap widens the interval and is named."""
    simulated = perfmodel.simulate_telemetry(
        answer.spec, constants, job_id="spec", minutes=GAP_MINUTES, seed=0, start=_START
    )
    predicted = job_features(summarize_gpus(simulated)).row
    gaps = []
    for signal in GAP_SIGNALS:
        name = ratio_feature(signal, "mean")
        seen, expected = float(features.get(name, math.nan)), float(predicted[name])
        if math.isfinite(seen) and expected > 0:
            gaps.append((abs(seen - expected) / expected, signal, seen, expected))
    if not gaps:
        return replace(
            answer, gap_note="the job's telemetry has no SM or tensor activity to check the model by"
        )
    gap, signal, seen, expected = max(gaps)
    note = (
        f"the job's telemetry against the performance model's prediction for its spec: {signal} "
        f"{seen:.2f} measured, {expected:.2f} predicted ({100 * gap:.0f} % apart)"
    )
    return replace(answer, gap_percent=100.0 * gap, gap_note=note)


def takes_search(choice: AlgorithmChoice, answer: SearchAnswer) -> bool:
    """Whether ``choice`` becomes the model's top K trials: the heuristic, when its Z was not given."""
    return choice.name == "heuristic" and choice.z_percent is None and bool(answer.top)


def with_search(chosen: tuple[AlgorithmChoice, ...], answer: SearchAnswer) -> tuple[AlgorithmChoice, ...]:
    """The algorithms with the heuristic, when its Z was not given, as the model's top K trials."""
    return tuple(
        AlgorithmChoice(c.name, len(answer.top), answer.z_percent) if takes_search(c, answer) else c
        for c in chosen
    )


def reconcile_note(answer: SearchAnswer, z_e: ZInterval | None, *, z_e_from_telemetry: bool) -> str:
    """Which estimate the decision uses for what, and why."""
    z = answer.z_percent
    gap = f" + telemetry gap {answer.gap_percent:.0f} %" if answer.gap_percent >= 0.5 else ""
    search = (
        f"the performance model's search ({answer.configurations:,} layouts; held-out error "
        f"{answer.error_percent:.1f} %{gap}) predicts Z = {z.mid:.1f} ({z.low:.1f}-{z.high:.1f}) % for its "
        f"top {len(answer.top)}"
    )
    if z_e_from_telemetry and z_e is not None:
        verdict = (
            f"{search}: the heuristic tries those {len(answer.top)} (N = {len(answer.top)}, that Z); "
            f"black-box and exhaustive keep the telemetry's Z_e {z_e.mid:.1f} "
            f"({z_e.low:.1f}-{z_e.high:.1f}) %, "
            "whose labels are measured tuning outcomes"
        )
        if z.low > z_e.high:
            verdict += (
                "; the search finds more than Z_e's whole interval: Z_e counts a study's ~9 configurations, "
                "the search every layout, so a broad search may beat Z_e if the model is right for this job"
            )
        elif z.high < z_e.low:
            verdict += (
                "; the search finds less than Z_e: the model sees little left to gain in this job's layout"
            )
        return verdict
    return (
        f"{search}: with no telemetry, every algorithm takes the search's Z (the heuristic tries the top "
        f"{len(answer.top)}); predicted, not measured"
    )
