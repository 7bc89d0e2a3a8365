"""``zest advise``: is the next batch of a running (or finished) tuning study worth its GPU time?

Thin: read the study (the readers and options of ``zest record``), the cluster's
recorded curves (``zest record``'s store, when there is one), call
:mod:`estimator.decision.next_trials`, print. The study is a
:class:`collectors.studies.optuna.StudyRecord`; any reader that returns one
(Optuna, ZenithTune and Ray Tune here) can feed it. zest's errors propagate to the
``zest`` group, which maps them to exit codes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from collectors.errors import InputError, OutcomesError
from collectors.studies.optuna import COMPLETE, StudyRecord
from collectors.studies.store import read_outcomes
from estimator.cli.options import FloatIn, IntIn, breakeven_job_options
from estimator.cli.outcomes import StudyOptions, read_studies, resolved_store, store_option, study_options
from estimator.decision.algorithms import ALGORITHMS_BY_NAME, CaptureShares, capture_shares
from estimator.decision.breakeven import Job
from estimator.decision.next_trials import (
    NO_CEILING,
    NextTrialsAdvice,
    OnTopAdvice,
    TrialOutcome,
    ZCeiling,
    advise_next_trials,
    cluster_ceiling,
    found_z_percent,
    record_improvements,
    search_on_top,
    search_so_far,
)
from estimator.reports.table import json_text

__all__ = ["advise"]

#: The cheap study a broader search goes on top of: the heuristic (or ``zest whatif``'s top K).
_CHEAP = "heuristic"


def _outcomes(study: StudyRecord) -> list[TrialOutcome]:
    return [
        TrialOutcome(t.number, t.value if t.state == COMPLETE else None, t.duration_seconds)
        for t in study.trials
    ]


def _read_study(options: StudyOptions) -> StudyRecord:
    """The one study the options name (with ``--zenithtune-dir``, ``--study`` picks one of several)."""
    (study,) = read_studies(options, pick=True)
    return study


def _cluster_curves(store_path: Path | None, study: StudyRecord) -> tuple[list[float], int, list[float]]:
    """From the studies recorded in the store (this one left out): their record improvements, how many
    studies made one, and the Z (%) each found."""
    recorded = read_outcomes(resolved_store(store_path))
    if recorded is None:
        return [], 0, []
    studies, trials = recorded
    started = None if study.started_at is None else study.started_at.isoformat()
    sizes: list[float] = []
    found_z: list[float] = []
    used = 0
    for _, row in studies.iterrows():
        if row["name"] == study.name and row["started_at"] == started:
            continue
        own = trials[trials["study_id"] == row["study_id"]].sort_values("number")
        values = own["value"].where(own["state"].eq(COMPLETE))
        seconds = [
            None if not (math.isfinite(v) and v > 0) else (v if row["objective"] == "time" else 1.0 / v)
            for v in values.to_numpy(dtype=float)
        ]
        found = record_improvements(seconds)
        used += bool(found)
        sizes += found
        found_z.append(found_z_percent(seconds))
    return sizes, used, found_z


def _shares() -> CaptureShares:
    from estimator.model.default import default_model  # the model only when --then asks for its shares

    return capture_shares(default_model().capture_shares())


class _ThenType(click.ParamType):
    """``NAME[=TRIALS]``: a broader algorithm (black-box, exhaustive) and its N (default: its default N)."""

    name = "NAME[=TRIALS]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        name, _, trials_text = str(value).partition("=")
        broader = [a for a in ALGORITHMS_BY_NAME if a != _CHEAP]
        if name not in broader:
            self.fail(f"unknown algorithm {name!r}; accepted: {', '.join(broader)}", param, ctx)
        if not trials_text:
            return name, ALGORITHMS_BY_NAME[name].trials
        try:
            trials = int(trials_text)
        except ValueError:
            trials = 0
        if trials < 1:
            self.fail(f"TRIALS in {value!r} must be a whole number >= 1", param, ctx)
        return name, trials


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _document(
    study: StudyRecord,
    advice: NextTrialsAdvice,
    on_top: OnTopAdvice | None,
    cluster_studies: int,
    notes: list[str],
) -> dict[str, Any]:
    search, a, z = advice.search, advice.assessment, advice.expected_gain
    best_seconds = search.best_seconds
    ordered = sorted(study.trials, key=lambda t: t.number)
    best = next(t for t, s in zip(ordered, search.seconds, strict=True) if s == best_seconds)
    default = next(t for t in study.trials if t.number == search.default_number)
    return {
        "schema_version": 1,
        "study": study.name,
        "storage": study.storage,
        "objective": study.objective,
        "direction": study.direction,
        "inputs": {
            "duration_hours": advice.job.duration_hours,
            "gpus": advice.job.gpus,
            "reuse_count": advice.job.reuse,
            "next_trials": advice.next_trials,
            "trial_hours": _number(search.trial_hours),
        },
        "trials": {
            "finished": search.finished,
            "complete": search.complete,
            "failed_or_pruned": search.finished - search.complete,
            "running": study.running,
        },
        "default": {"trial": default.number, "value": default.value},
        "best": {"trial": best.number, "value": best.value},
        "z_found_percent": search.z_found_percent,
        "model": {
            "name": "record model: p_j = q/(n + q(j-1) + 1), "
            "dZ(k) = min((100 - Z_found)(1 - prod(1 - mu p_j)), Z_max - Z_found)",
            "record_improvements": len(advice.improvements),
            "from": advice.improvements_from,
            "cluster_studies": cluster_studies,
            "mean_improvement_percent": 100.0 * advice.mean_improvement,
            "success_rate": search.success_rate,
            "z_ceiling_percent": advice.ceiling.percent,
            "z_ceiling_from": advice.ceiling.source,
        },
        "expected_gain_percent": z.mid,
        "expected_gain_percent_interval": {"low": z.low, "mid": z.mid, "high": z.high},
        "exploration_gpu_hours": None if a is None else a.exploration_gpu_hours,
        "speedup_hours_per_run": None if a is None else a.speedup_hours_per_run,
        "z_break_percent": None if a is None else a.z_break_percent,
        "net_saving_gpu_hours": None if a is None else a.net_saving_gpu_hours,
        "verdict": None if a is None else str(a.verdict),
        # past the horizon the model finds no count: null, and "horizon" says more than how many pay
        "trials_that_pay": None if advice.beyond_horizon else advice.trials_that_pay,
        "best_trials": None if advice.best_beyond_horizon else advice.best_trials,
        "best_net_saving_gpu_hours": None
        if advice.best_beyond_horizon
        else _number(advice.best_net_saving_gpu_hours),
        "horizon": {
            "trials": advice.horizon,
            "trials_that_pay_beyond": advice.beyond_horizon,
            "best_trials_beyond": advice.best_beyond_horizon,
        },
        "decision": advice.decision,
        "reason": advice.reason,
        "on_top": None
        if on_top is None
        else {
            "algorithm": on_top.name,
            "after": _CHEAP,
            "trials": on_top.assessment.candidate.trials,
            "trial_hours": on_top.assessment.candidate.trial_hours,
            "share_ratio": on_top.then_share / on_top.cheap_share,
            "expected_gain_percent": on_top.z_percent,
            "exploration_gpu_hours": on_top.assessment.exploration_gpu_hours,
            "z_break_percent": on_top.assessment.z_break_percent,
            "net_saving_gpu_hours": on_top.assessment.net_saving_gpu_hours,
            "verdict": str(on_top.assessment.verdict),
        },
        "notes": notes,
    }


def _g(value: float, digits: int = 3) -> str:
    """A number to read: whole above 1,000 (1,280), else ``digits`` significant digits (0.667, 59)."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 10 ** min(digits, 3) else f"{value:.{digits}g}"


def _table(document: dict[str, Any]) -> list[str]:
    d = document
    trials, model, z = d["trials"], d["model"], d["expected_gain_percent_interval"]
    t = d["inputs"]["trial_hours"]
    head = f"study {d['study']} ({d['objective']}): {trials['finished']} finished trial(s), "
    head += f"{trials['complete']} complete"
    head += f", {trials['running']} running" if trials["running"] else ""
    head += "" if t is None else f"; t = {_g(60 * t)} min per trial"
    batch = f"next {d['inputs']['next_trials']} trial(s): expected gain {_g(z['mid'])} "
    batch += f"({_g(z['low'])}-{_g(z['high'])}) % of T"
    if d["verdict"] is not None:
        batch += (
            f"; cost {_g(d['exploration_gpu_hours'])} GPU-h; Z_break {_g(d['z_break_percent'])} %; "
            f"net saving {_g(d['net_saving_gpu_hours'])} GPU-h over R = {_g(d['inputs']['reuse_count'])}; "
            f"{d['verdict']}"
        )
    lines = [
        head,
        f"default: trial {d['default']['trial']} = {_g(d['default']['value'], 6)}; best: trial "
        f"{d['best']['trial']} = {_g(d['best']['value'], 6)}; Z so far {_g(d['z_found_percent'])} %",
        f"record model: {model['record_improvements']} improvement(s) of a new best ({model['from']}), "
        f"mean {_g(model['mean_improvement_percent'])} %; success rate {_g(model['success_rate'])}; "
        f"Z at most {_g(model['z_ceiling_percent'])} % ({model['z_ceiling_from']})",
        batch,
    ]
    horizon = d["horizon"]
    if d["decision"] == "continue" and horizon["trials_that_pay_beyond"]:
        best = (
            "the net saving still rises there"
            if horizon["best_trials_beyond"]
            else f"{d['best_trials']:,} maximise the net saving ({_g(d['best_net_saving_gpu_hours'])} GPU-h)"
        )
        lines.append(
            f"decision: continue: more than {horizon['trials']:,} more trial(s) pay in expectation "
            f"({horizon['trials']:,} is the horizon weighed, not a count); {best}"
        )
        if model["z_ceiling_percent"] >= 100:
            lines.append(
                "note: without a ceiling the record model's gain grows with the log of the trials, so a "
                "long, much reused job pays at any horizon; --z-max (e.g. the job's Z_e high bound) or "
                "recorded studies (zest record, --store) bound it"
            )
    elif d["decision"] == "continue" and d["trials_that_pay"]:
        lines.append(
            f"decision: continue: up to {d['trials_that_pay']:,} more trial(s) pay in expectation; "
            f"{d['best_trials']:,} maximise the net saving ({_g(d['best_net_saving_gpu_hours'])} GPU-h)"
        )
    else:
        lines.append(f"decision: {d['decision']}: {d['reason']}")
    top = d["on_top"]
    if top is not None:
        lines.append(
            f"{top['algorithm']} on top of this {top['after']} study (N = {top['trials']}, t = "
            f"{_g(60 * top['trial_hours'])} min): expected further gain "
            f"{_g(top['expected_gain_percent'])} % of T "
            f"(share ratio {_g(top['share_ratio'])}); cost {_g(top['exploration_gpu_hours'])} GPU-h; "
            f"Z_break {_g(top['z_break_percent'])} %; net saving {_g(top['net_saving_gpu_hours'])} GPU-h; "
            f"{top['verdict']}"
        )
    lines += [f"note: {n}" for n in d["notes"]]
    return lines


@click.command("advise")
@study_options
@click.option(
    "--default-trial",
    type=IntIn(min=0),
    default=None,
    help="Trial number of the job's default (baseline) configuration. Default: the first COMPLETE trial.",
)
@breakeven_job_options(
    from_scheduler=False,
    trial_minutes=None,
    trial_minutes_default="Default: the study's measured mean trial duration (start to end).",
)
@click.option(
    "--next",
    "next_trials",
    type=IntIn(min=1),
    default=10,
    show_default=True,
    help="K: the batch of further trials to price.",
)
@click.option(
    "--then",
    "then",
    type=_ThenType(),
    default=None,
    help="Treat this study as the cheap one (the heuristic, or zest whatif's top K) and weigh a broader "
    "search on top: black-box or exhaustive, NAME[=TRIALS] (default N: 500 and 2000).",
)
@click.option(
    "--z-max",
    "z_max",
    type=FloatIn(min=0, max=100),
    default=None,
    help="Z_max: the most Z (%) tuning this job can reach, e.g. estimate-z's Z_e high bound; the expected "
    "gain of further trials is capped at Z_max - Z so far. Default: the highest Z found by the store's "
    "recorded studies, when above this study's; else none (the model's own limit, 100 %).",
)
@store_option
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def advise(
    study: StudyOptions,
    default_trial: int | None,
    duration_hours: float,
    gpus: int,
    reuse: float,
    next_trials: int,
    trial_minutes: float | None,
    then: tuple[str, int] | None,
    z_max: float | None,
    store_path: Path | None,
    output: str,
) -> None:
    """Is the next batch of trials of a running or finished tuning study worth its GPU time?

    Fits the study's best-so-far curve with the record model (a new best at the j-th next trial with
    probability q/(n + q(j-1) + 1), each improving the best by the mean of the study's own improvements),
    prices the next trials with the break-even formulas at T, R and G, and says continue (and how many
    more trials pay) or stop.

    The gain is capped at Z_max (--z-max, else the cluster's recorded studies' highest Z; the answer says
    which). At most 100,000 further trials are weighed: when they all still pay, the answer is "more than
    100,000", the horizon, not a count (JSON: trials_that_pay null, horizon.trials_that_pay_beyond true).
    """
    read = _read_study(study)
    try:
        search = search_so_far(_outcomes(read), read.objective, default_trial)
    except ValueError as exc:
        raise (InputError if default_trial is not None else OutcomesError)(
            f"study {read.name}: {exc}"
        ) from None
    if trial_minutes is not None:
        search = replace(search, trial_hours=trial_minutes / 60.0)
    notes: list[str] = []
    sizes, cluster_studies, cluster_z = _cluster_curves(store_path, read)
    if read.running:
        notes.append(f"{read.running} trial(s) still running are not counted")
    ceiling: ZCeiling | None = (
        ZCeiling(z_max, "given: --z-max")
        if z_max is not None
        else cluster_ceiling(cluster_z, search.z_found_percent)
    )
    job = Job(duration_hours, gpus, reuse)
    advice = advise_next_trials(
        search, job, next_trials=next_trials, cluster_improvements=sizes, ceiling=ceiling or NO_CEILING
    )
    on_top = None
    if then is not None:
        shares = _shares()
        name, trials = then
        t = search.trial_hours if math.isfinite(search.trial_hours) and search.trial_hours > 0 else 25 / 60
        on_top = search_on_top(
            search.z_found_percent, name=name, trials=trials, trial_hours=t,
            cheap_share=shares.shares[_CHEAP], then_share=shares.shares[name], job=job,
        )  # fmt: skip
        notes.append(
            f"{name} on top: its further gain is Z so far x ({name} share / {_CHEAP} share - 1); "
            + shares.note
        )
    notes.append(
        "the record model takes the trials as exchangeable (a random search); a model-based sampler "
        "(TPE) sets new bests more often early, so the expected gain is conservative there"
    )
    document = _document(read, advice, on_top, cluster_studies, notes)
    if output == "json":
        click.echo(json_text(document))
    else:
        for line in _table(document):
            click.echo(line)
