"""``zest whatif``'s outputs: the JSON document, the table and the Optuna warm-start trials.

Plain data in (the ranked configurations of :mod:`estimator.perfmodel.search`),
plain data out; the command writes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from estimator.perfmodel.iteration import JobSpec
from estimator.perfmodel.search import HeldOutError, Ranked, describe_layout

__all__ = ["OPTUNA_PARAMS", "optuna_trials", "render_whatif", "whatif_document"]

GIB: Final = 1024**3
#: The parameter names of an emitted Optuna trial: JobSpec fields (the layout knobs). The data
#: parallelism follows from them (num_gpus / (tensor_parallel · pipeline_parallel)).
OPTUNA_PARAMS: Final = (
    "tensor_parallel",
    "pipeline_parallel",
    "pipeline_interleaving",
    "micro_batch",
    "recompute",
    "sharding",
    "sequence_parallel",
)


def spec_document(spec: JobSpec) -> dict[str, Any]:
    """A spec as the JSON object ``--spec`` reads (fields at their default left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            out[f.name] = value
    return out


def _entry(rank: int, r: Ranked, baseline_seconds: float | None, mape: float | None) -> dict[str, Any]:
    band = None if mape is None else mape / 100.0
    return {
        "rank": rank,
        **({} if r.index is None else {"index": r.index}),
        "layout": describe_layout(r.spec),
        "iteration_seconds": r.iteration_seconds,
        "iteration_seconds_low": None if band is None else r.iteration_seconds * (1.0 - band),
        "iteration_seconds_high": None if band is None else r.iteration_seconds * (1.0 + band),
        "speedup": None if baseline_seconds is None else baseline_seconds / r.iteration_seconds,
        "memory_bytes_per_gpu": r.memory_bytes_per_gpu,
        "spec": spec_document(r.spec),
    }


def whatif_document(
    ranked: Sequence[Ranked],
    *,
    job: Ranked | None,
    searched: int | None,
    error: HeldOutError | None,
    left_out: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON output: ``job`` (the job's own configuration, or null), ``uncertainty``, ``ranked`` (best
    first; ``index`` present for a candidates file), ``configurations`` (searched or given), ``left_out``
    (candidates that do not fit, with why) and ``notes``. Speedups are over ``job`` (null without one)."""
    baseline = None if job is None else job.iteration_seconds
    mape = None if error is None else error.mape_percent
    return {
        "job": None if job is None else _entry(0, job, baseline, mape) | {"rank": None},
        "configurations": searched,
        "uncertainty": None
        if error is None
        else {
            "mape_percent": error.mape_percent,
            "gpu": error.gpu,
            "measured_on": error.measured_on,
            "rows": error.rows,
            "meaning": "iteration_seconds_low/high = predicted ± the performance model's held-out MAPE of "
            "iteration time on this GPU type (cross-validation grouped by model, perfmodel_constants.json)",
        },
        "ranked": [_entry(k, r, baseline, mape) for k, r in enumerate(ranked, start=1)],
        "left_out": list(left_out),
        "notes": list(notes),
    }


def render_whatif(document: dict[str, Any], console: Console) -> None:
    """The ranked configurations as a table, with the job's own line above and the notes below."""
    job = document["job"]
    if job is not None:
        console.print(
            f"job: {job['layout']}: {job['iteration_seconds']:.3f} s per iteration (predicted), "
            f"{job['memory_bytes_per_gpu'] / GIB:.1f} GiB per GPU"
        )
    candidates = any("index" in e for e in document["ranked"])
    if document["configurations"] is not None:
        what = "candidates" if candidates else "configurations that fit"
        console.print(
            f"{document['configurations']:,} {what} ranked by predicted iteration time; "
            f"the best {len(document['ranked'])}:"
        )
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("#", justify="right")
    if candidates:
        table.add_column("line", justify="right")
    table.add_column("configuration")
    table.add_column("s/iteration", justify="right")
    table.add_column("± MAPE", justify="right")
    table.add_column("speedup", justify="right")
    table.add_column("GiB/GPU", justify="right")
    for e in document["ranked"]:
        low, high = e["iteration_seconds_low"], e["iteration_seconds_high"]
        cells = [str(e["rank"])]
        if candidates:
            cells.append(str(e["index"]))
        cells += [
            e["layout"],
            f"{e['iteration_seconds']:.3f}",
            "n/a" if low is None else f"{low:.3f}-{high:.3f}",
            "n/a" if e["speedup"] is None else f"{e['speedup']:.2f}x",
            f"{e['memory_bytes_per_gpu'] / GIB:.1f}",
        ]
        table.add_row(*cells)
    console.print(table)
    for item in document["left_out"]:
        console.print(f"left out: line {item['index']}: {item['reason']}")
    for note in document["notes"]:
        console.print(f"note: {note}")


def optuna_trials(ranked: Sequence[Ranked]) -> list[dict[str, Any]]:
    """One ``study.enqueue_trial(params)`` argument per configuration, in rank order: :data:`OPTUNA_PARAMS`
    of each spec (ints, strings and a bool, as the objective's ``suggest_*`` calls return them)."""
    return [{name: getattr(r.spec, name) for name in OPTUNA_PARAMS} for r in ranked]
