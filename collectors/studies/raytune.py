"""A finished Ray Tune experiment folder read as a tuning study, without Ray.

Ray Tune (1.x ``~/ray_results/<experiment>/``, 2.x ``<storage_path>/<name>/``)
writes one folder per trial, ``<trainable>_<trial_id>_<index>_<params>_<date>/``,
holding ``params.json`` (the trial's configuration), ``result.json`` (one JSON
object per reported iteration), ``progress.csv`` (the same results, flattened,
without ``config``) and, for a failed trial, ``error.txt`` (2.x: also
``error.pkl``). Only these JSON and CSV files are read: the experiment's
``tuner.pkl``, ``params.pkl`` and ``error.pkl`` are pickles, and reading a
study must not run code. The experiment-level ``experiment_state-*.json`` is not
read either: its trial entries are version-specific and partly pickled.
:func:`read_ray_tune_experiment` returns the :class:`StudyRecord` that
:func:`collectors.studies.optuna.read_optuna_study` returns for an Optuna study.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from collectors.errors import OutcomesError
from collectors.studies.optuna import (
    COMPLETE,
    JOB_ID_ATTRS,
    OBJECTIVES,
    StudyRecord,
    TrialRecord,
    plain_value,
)
from collectors.util import one_line

PARAMS_FILE: Final = "params.json"
RESULT_FILE: Final = "result.json"
PROGRESS_FILE: Final = "progress.csv"
#: A trial folder holding one of these failed: Ray writes them when the trainable raised.
ERROR_FILES: Final = ("error.txt", "error.pkl")
#: Files one of which marks a folder of the experiment as a trial's folder.
TRIAL_FILES: Final = (PARAMS_FILE, RESULT_FILE, PROGRESS_FILE, *ERROR_FILES)
#: Ray's ``mode`` and the Optuna direction and zest objective each stands for.
MODES: Final = {"max": ("maximize", "throughput"), "min": ("minimize", "time")}
#: Which reported value of the metric is a trial's value: its last one (Ray's ``scope="last"``, the
#: default of ``ResultGrid.get_best_result``), or its best one by ``mode`` (Ray's ``scope="all"``).
VALUE_SCOPES: Final = ("last", "best")
#: Ray's auto-filled result keys used here (``ray.tune.result``).
TRAINING_ITERATION: Final = "training_iteration"
TIME_THIS_ITER_S: Final = "time_this_iter_s"
TIMESTAMP: Final = "timestamp"
TRIAL_ID: Final = "trial_id"
#: How Ray's JSON encoder writes a NumPy NaN (``SafeFallbackEncoder``: the string "null"); a Python NaN
#: is JSON's ``NaN`` and pandas reads an empty ``progress.csv`` cell as NaN.
NAN_TEXTS: Final = ("null", "nan")
#: Ray's default trial ids, ``<5 hex digits>_<index, 5 digits>`` (BasicVariantGenerator and searchers);
#: the index counts the trials in the order Ray created them, from 0, as Optuna's trial number does.
_TRIAL_ID = re.compile(r"(?:^|_)(?P<id>[0-9a-f]{5}_(?P<index>\d{5}))(?:_|$)")


@dataclass(frozen=True)
class _Trial:
    """What one trial folder says, before the experiment-wide decisions (number, PRUNED)."""

    folder: Path
    params: Mapping[str, Any]
    results: tuple[Mapping[str, Any], ...]  # flattened with "/", without config
    failed: bool  # error.txt or error.pkl present

    @property
    def index(self) -> int | None:
        """Ray's creation index, from the trial id of the results or else of the folder's name."""
        ids = [str(r[TRIAL_ID]) for r in self.results if TRIAL_ID in r] + [self.folder.name]
        for text in ids:
            match = _TRIAL_ID.search(text)
            if match:
                return int(match["index"])
        return None

    @property
    def iterations(self) -> int:
        """Iterations reported: the highest ``training_iteration`` (Ray 1.x repeats the last result)."""
        numbers = [_number(r.get(TRAINING_ITERATION)) for r in self.results]
        counted = [int(n) for n in numbers if n is not None]
        return max(counted) if counted else len(self.results)

    @property
    def started_at(self) -> datetime | None:
        """First result's ``timestamp`` less its ``time_this_iter_s``: when the trainable began, in UTC."""
        for result in self.results:
            moment = _number(result.get(TIMESTAMP))
            if moment is not None:
                before = _number(result.get(TIME_THIS_ITER_S)) or 0.0
                return datetime.fromtimestamp(moment, UTC) - timedelta(seconds=before)
        return None

    @property
    def completed_at(self) -> datetime | None:
        """Last result's ``timestamp`` (whole seconds, as Ray writes it), in UTC."""
        for result in reversed(self.results):
            moment = _number(result.get(TIMESTAMP))
            if moment is not None:
                return datetime.fromtimestamp(moment, UTC)
        return None


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a number (not a bool, not NaN), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested keys joined by ``/``, as Ray flattens them for ``progress.csv`` and its data frames."""
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flat(value, f"{name}/")
        else:
            yield name, value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OutcomesError(
            f"{path}: cannot be read ({one_line(exc)}): check its rights, or remove the trial folder"
        ) from None


def _read_results(folder: Path) -> tuple[Mapping[str, Any], ...]:
    """The trial's results from ``result.json``, else from ``progress.csv``; none when neither exists."""
    path = folder / RESULT_FILE
    if path.is_file():
        results = []
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                result = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OutcomesError(
                    f"{path}: line {number} is not JSON ({one_line(exc)}): "
                    "remove the line (a run killed while writing), or the trial folder"
                ) from None
            if not isinstance(result, dict):
                raise OutcomesError(
                    f"{path}: line {number} is not a JSON object: give a result.json Ray Tune wrote"
                )
            result.pop("config", None)
            results.append(dict(_flat(result)))
        return tuple(results)
    path = folder / PROGRESS_FILE
    if path.is_file():  # written without the JSON logger: the same results, already flat
        import pandas as pd

        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return ()
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise OutcomesError(
                f"{path}: not a CSV file ({one_line(exc)}): give a progress.csv Ray Tune wrote"
            ) from None
        rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        return tuple({str(k): v for k, v in row.items() if v is not None} for row in rows)
    return ()


def _read_params(folder: Path) -> Mapping[str, Any]:
    path = folder / PARAMS_FILE
    if not path.is_file():
        return {}
    try:
        params = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise OutcomesError(
            f"{path}: not JSON ({one_line(exc)}): give the params.json Ray Tune wrote"
        ) from None
    if not isinstance(params, dict):
        raise OutcomesError(f"{path}: not a JSON object: give the params.json Ray Tune wrote")
    return {name: plain_value(value) for name, value in _flat(params)}


def _read_trial(folder: Path) -> _Trial:
    results = _read_results(folder)
    return _Trial(
        folder=folder,
        params=_read_params(folder),
        results=results,
        failed=any((folder / name).is_file() for name in ERROR_FILES),
    )


def _values(trial: _Trial, metric: str) -> list[float]:
    """The metric's reported values, in order, NaN as NaN; a value that is no number is a malformed file."""
    values = []
    for number, result in enumerate(trial.results, start=1):
        if metric not in result:
            continue
        value = result[metric]
        if value is None or (isinstance(value, str) and value.lower() in NAN_TEXTS):
            values.append(math.nan)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise OutcomesError(
                f"{trial.folder}: result {number} reports {metric}={value!r}, not a number: "
                "give a numeric metric"
            )
        else:
            values.append(float(value))
    return values


def _job_id(trial: _Trial) -> str | None:
    """The scheduler job the trial ran as, when it reported one (:data:`JOB_ID_ATTRS`)."""
    for result in reversed(trial.results):
        for key in JOB_ID_ATTRS:
            if result.get(key) not in (None, ""):
                return str(result[key])
    return None


def _ordered(trials: list[_Trial]) -> list[_Trial]:
    """By Ray's creation index when every trial has a distinct one, else by start time."""
    indexes = [t.index for t in trials]
    if None not in indexes and len(set(indexes)) == len(indexes):
        return sorted(trials, key=lambda t: t.index or 0)
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(trials, key=lambda t: (t.started_at or never, t.folder.name))


def read_ray_tune_experiment(
    path: Path,
    *,
    metric: str,
    mode: str | None = None,
    objective: str | None = None,
    value: str = "last",
    full_iterations: int | None = None,
) -> StudyRecord:
    """The trials of the Ray Tune experiment in folder ``path`` (``<storage_path>/<name>``).

    ``metric``: the reported key that is the objective (a nested one as ``a/b``,
    as Ray flattens it); ``mode``: ``max`` or ``min``, as given to Ray's
    ``TuneConfig`` (the folder holds it only in ``tuner.pkl``, which is not
    unpickled), else taken from ``objective`` (throughput: max, time: min);
    ``objective`` (:data:`OBJECTIVES`) defaults from ``mode``. ``value``: a
    trial's value is the ``last`` value of ``metric`` it reported, or its
    ``best`` by ``mode``.

    Trials are numbered from 0 in the order Ray created them (the index in its
    trial ids ``xxxxx_00007``, the order it launched them); when a trial shows
    no such index (other trial ids; a trial without results in a folder named by
    a custom ``trial_dirname_creator``) or two share one (two runs written to one
    folder), in order of start, trials without results last. ``started_at`` is
    the first result's ``timestamp`` less its ``time_this_iter_s``,
    ``completed_at`` the last result's ``timestamp`` (UTC, whole seconds as Ray
    writes them); a trial without results has neither.

    States: FAIL when the trial folder holds ``error.txt`` or ``error.pkl``,
    when it reported no result, or when its value is missing, NaN, infinite or
    not > 0 (as for Optuna: such a time or throughput measured nothing; with
    ``last`` a final NaN report counts, with ``best`` only finite ones do).
    PRUNED is a guess, since Ray records no scheduler decision in the folder
    (``done`` is true both for a trial a scheduler stopped and for one that
    reached a stopping criterion): a trial without error that reported fewer
    than ``full_iterations`` iterations (default: the most any trial without
    error reported) is PRUNED. Right for ASHA, HyperBand or median stopping
    with a fixed ``max_t``; wrong when trials have different lengths by design
    or a stopper ends them on a metric: pass ``full_iterations=1`` to keep them
    all COMPLETE. Every trial folder counts as finished (``running`` is 0): a
    trial still running cannot be told from one that ended.

    Raises :class:`OutcomesError` when the folder is missing, holds no trial
    folder, a ``result.json`` line or ``params.json`` is not JSON, or no trial
    reported ``metric``.
    """
    if value not in VALUE_SCOPES:
        raise OutcomesError(f"value must be one of {', '.join(VALUE_SCOPES)}, got {value!r}")
    if objective is not None and objective not in OBJECTIVES:
        raise OutcomesError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if mode is None and objective is not None:
        mode = "max" if objective == "throughput" else "min"
    if mode not in MODES:
        raise OutcomesError(
            f"mode must be max or min (Ray's TuneConfig mode), or give the objective; got {mode!r}"
        )
    if full_iterations is not None and full_iterations < 1:
        raise OutcomesError(f"full_iterations must be 1 or more, got {full_iterations}")
    if path.is_file() and path.name.startswith("experiment_state"):
        path = path.parent  # Ray's ExperimentAnalysis takes the state file too
    if not path.is_dir():
        raise OutcomesError(
            f"{path}: no such folder: give a Ray Tune experiment folder, <storage_path>/<name> "
            "(~/ray_results/<name> by default)"
        )
    try:
        folders = sorted(
            p for p in path.iterdir() if p.is_dir() and any((p / name).is_file() for name in TRIAL_FILES)
        )
    except OSError as exc:
        raise OutcomesError(f"{path}: cannot be listed ({one_line(exc)}): check its rights") from None
    if not folders:
        raise OutcomesError(
            f"{path}: no trial folder (one holding {PARAMS_FILE} or {RESULT_FILE}): give one "
            "experiment's folder, <storage_path>/<name>, not the storage path above it"
        )
    trials = _ordered([_read_trial(folder) for folder in folders])
    reported = {t.folder: _values(t, metric) for t in trials}
    if not any(reported.values()):
        keys = sorted({k for t in trials for r in t.results for k in r})
        raise OutcomesError(
            f"{path}: no trial reported metric {metric!r}: give one of {', '.join(keys) or 'none'}"
        )
    full = full_iterations or max((t.iterations for t in trials if not t.failed), default=0)
    direction, meaning = MODES[mode]
    pick = max if mode == "max" else min
    records = []
    for number, trial in enumerate(trials):
        values = reported[trial.folder]
        finite = [v for v in values if math.isfinite(v)]
        result: float | None = None
        if trial.failed or not trial.results:
            state = "FAIL"
        elif trial.iterations < full:
            state = "PRUNED"
        else:
            state = COMPLETE
            if values:
                result = values[-1] if value == "last" else pick(finite, default=math.nan)
            if result is None or not (math.isfinite(result) and result > 0):
                state, result = "FAIL", None  # NaN, zero or negative time or throughput: measured nothing
        records.append(
            TrialRecord(
                number=number,
                state=state,
                value=result,
                started_at=trial.started_at,
                completed_at=trial.completed_at,
                params=dict(trial.params),
                job_id=_job_id(trial),
            )
        )
    return StudyRecord(path.name, str(path.resolve()), direction, objective or meaning, tuple(records))
