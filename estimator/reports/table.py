"""Turn a break-even decision into the JSON document and the table ``estimate-z`` prints."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from estimator.decision.breakeven import Assessment, Decision, ZInterval, recommendation_text
from estimator.features.diagnoses import Diagnosis

SCHEMA_VERSION = 1
#: Significant digits of every number in a JSON output: the model's inputs are not known better.
JSON_DIGITS = 6


def json_ready(value: Any, digits: int = JSON_DIGITS) -> Any:
    """``value`` as printed in JSON: floats to ``digits`` significant digits, whole ones as integers, NaN
    and infinity as null (JSON has neither), NumPy scalars as Python's; containers alike."""
    if isinstance(value, Mapping):
        return {k: json_ready(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v, digits) for v in value]
    if hasattr(value, "item") and not isinstance(value, bool | int | float | str):  # NumPy scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    if not math.isfinite(value):
        return None
    rounded = float(f"{value:.{digits}g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded


def json_text(document: Any) -> str:
    """The JSON text of an output document (``--output json``), numbers as :func:`json_ready` gives them."""
    return json.dumps(json_ready(document), indent=2)


def _number(value: float | None) -> float | None:
    """JSON has no infinity: an unreachable break-even is null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def _interval(z: ZInterval | None) -> dict[str, float] | None:
    return None if z is None else {"low": z.low, "mid": z.mid, "high": z.high}


def _algorithm(a: Assessment) -> dict[str, Any]:
    c = a.candidate
    return {
        "name": c.name,
        "trials": c.trials,
        "trial_hours": c.trial_hours,
        "z_expected_percent": _interval(c.z_percent),
        "exploration_gpu_hours": a.exploration_gpu_hours,
        "exploration_hours_per_gpu": a.exploration_hours,
        "speedup_hours_per_run": a.speedup_hours_per_run,
        "r_explore": _number(a.r_explore),
        "r_impl": _number(a.r_impl),
        "r_break": _number(a.r_break),
        "r_break_range": {"low": _number(a.r_break_range[0]), "high": _number(a.r_break_range[1])},
        "first_paying_reuse": a.first_paying_reuse,
        "z_break_percent": a.z_break_percent,
        "net_saving_gpu_hours": a.net_saving_gpu_hours,
        "net_saving_cost": a.net_saving_cost,
        "verdict": str(a.verdict),
    }


def to_document(
    decision: Decision,
    *,
    job_id: str | None,
    trial_minutes: float,
    z_expected: ZInterval | None,
    notes: Sequence[str],
    telemetry: Mapping[str, Any] | None = None,
    z_relative_to: str | None = None,
    whole_space: Mapping[str, Any] | None = None,
    diagnoses: Sequence[Diagnosis] | None = None,
) -> dict[str, Any]:
    """The JSON document of ``estimate-z --output json`` (schema in the README).

    ``diagnoses``: what the job's telemetry shows (None: no telemetry read, null in JSON).
    """
    job, costs = decision.job, decision.costs
    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "inputs": {
            "duration_hours": job.duration_hours,
            "gpus": job.gpus,
            "reuse_count": job.reuse,
            "trial_minutes": trial_minutes,
            "engineer_hours": costs.engineer_hours,
            "gpu_hour_cost": costs.gpu_hour_cost,
            "engineer_hour_cost": costs.engineer_hour_cost,
        },
        "z_expected_percent": _interval(z_expected),
        "z_expected_relative_to": z_relative_to,
        "whole_space": dict(whole_space) if whole_space is not None else None,
        "algorithms": [_algorithm(a) for a in decision.assessments],
        "recommendation": decision.recommendation,
        "marginal_choice": decision.marginal_choice,
        "telemetry": dict(telemetry) if telemetry is not None else None,
        "diagnoses": None
        if diagnoses is None
        else [{"name": d.name, "evidence": d.evidence, "suggestion": d.suggestion} for d in diagnoses],
        "notes": list(notes),
    }


def fmt(value: float | None, *, unreachable: str = "never") -> str:
    """Three significant digits, one decimal from 100 up; ``unreachable`` for infinity, "-" for None."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return unreachable
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def _z_text(z: Mapping[str, float]) -> str:
    """``mid (low-high)``, or just the value when the interval is a point."""
    if z["low"] == z["high"]:
        return fmt(z["mid"])
    return f"{fmt(z['mid'])} ({fmt(z['low'])}-{fmt(z['high'])})"


_VERDICT_STYLE = {"proceed": "bold green", "marginal": "yellow", "does-not-pay": "red"}


def render_table(document: Mapping[str, Any], console: Console) -> None:
    """Print the document for a person: inputs, one row per algorithm, recommendation, diagnoses, notes."""
    inputs = document["inputs"]
    head = (
        f"job {document['job_id'] or '-'}: T = {fmt(inputs['duration_hours'])} h on "
        f"G = {inputs['gpus']} GPU(s), reused R = {fmt(inputs['reuse_count'])} time(s), "
        f"trial t = {fmt(inputs['trial_minutes'])} min"
    )
    z = document["z_expected_percent"]
    if z is not None:
        head += f"; Z_e (thorough search) {_z_text(z)} %"
    console.print(head, highlight=False)
    if document.get("z_expected_relative_to"):
        console.print(f"Z_e relative to {document['z_expected_relative_to']}", highlight=False)
    if space := document.get("whole_space"):
        console.print(
            f"whole space (performance model, predicted, not measured): of the {space['configurations']:,} "
            f"layouts of this job, the best ({space['best_layout']}) runs {fmt(space['speedup'])}x faster "
            f"than the job's: Z = {fmt(space['z_percent'])} %. Z_e is lower when a study's few "
            "configurations miss that corner; a broader search reaches it only if the model is right there",
            highlight=False,
            soft_wrap=True,
        )
    has_cost = any(a["net_saving_cost"] is not None for a in document["algorithms"])
    table = Table(show_edge=False, pad_edge=False)
    for title in (
        "algorithm",
        "N",
        "Z_e %",
        "explore GPU-h",
        "saved h/run",
        "R_break",
        "Z_break %",
        "net saving GPU-h",
        *(["net saving (currency)"] if has_cost else []),
        "verdict",
    ):
        table.add_column(title, justify="left" if title in ("algorithm", "verdict") else "right")
    for a in document["algorithms"]:
        z_text = _z_text(a["z_expected_percent"])
        row = [
            a["name"],
            str(a["trials"]),
            z_text,
            fmt(a["exploration_gpu_hours"]),
            fmt(a["speedup_hours_per_run"]),
            fmt(a["r_break"]),
            fmt(a["z_break_percent"]),
            fmt(a["net_saving_gpu_hours"]),
            *([fmt(a["net_saving_cost"])] if has_cost else []),
            f"[{_VERDICT_STYLE[a['verdict']]}]{a['verdict']}[/]",
        ]
        table.add_row(*row)
    console.print(table)
    console.print(
        f"net saving: GPU-hours saved over R = {fmt(inputs['reuse_count'])} runs at the mid Z, minus "
        "exploration and engineering; negative: tuning costs more than it saves",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        "recommendation: " + recommendation_text(document["recommendation"], document.get("marginal_choice")),
        highlight=False,
        soft_wrap=True,
    )
    for diagnosis in document.get("diagnoses") or ():
        console.print(
            f"diagnosis: {diagnosis['name']}: {diagnosis['evidence']} → {diagnosis['suggestion']}",
            highlight=False,
            soft_wrap=True,
        )
    for note in document["notes"]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
