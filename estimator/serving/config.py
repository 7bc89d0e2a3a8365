"""The configuration of ``zest serve``: break-even inputs for every job, from a TOML file.

Cluster-wide defaults sit in ``[defaults]``; each ``[[override]]`` names job
labels in ``match`` (regular expressions that must match the whole value)
and the inputs it changes. Overrides apply in file order, later ones win.
A job's labels are ``job_id``, ``namespace`` (the part before ``/`` of a
Kubernetes job id, else empty) and ``name`` (the part after it). The
annotated example, every built-in default in it, ships beside this module
(:func:`example_config_text`; ``zest serve --print-example-config``).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from collectors.errors import ConfigError, InputError
from estimator.decision.algorithms import (
    ALGORITHMS_BY_NAME,
    DEFAULT_ALGORITHMS,
    DEFAULT_TRIAL_MINUTES,
    AlgorithmChoice,
    Plan,
)
from estimator.decision.breakeven import Costs

#: Labels an override may match on.
MATCH_LABELS: tuple[str, ...] = ("job_id", "namespace", "name")
DEFAULT_WINDOW_SECONDS = 3600.0
DEFAULT_DURATION_HOURS = 24.0
DEFAULT_REUSE = 1.0
#: Where a job's T came from (``zest_job_duration_seconds``'s ``t_source`` label): the built-in default,
#: the config (``[defaults]`` or an ``[[override]]``), or the scheduler (``--slurm``: the time limit).
T_DEFAULT, T_CONFIG, T_SLURM = "default", "config", "slurm"
#: The annotated example config, package data of this package (grafana/zest.example.toml links to it).
EXAMPLE_CONFIG_NAME = "zest.example.toml"


def example_config_text() -> str:
    """The annotated example config that ships with zest (TOML text)."""
    return resources.files("estimator.serving").joinpath(EXAMPLE_CONFIG_NAME).read_text("utf-8")


@dataclass(frozen=True)
class BreakEven:
    """Break-even inputs of one job: T, R, t, optional G, engineering and prices, algorithms' trials."""

    duration_hours: float = DEFAULT_DURATION_HOURS
    reuse: float = DEFAULT_REUSE
    trial_minutes: float = DEFAULT_TRIAL_MINUTES
    gpus: int | None = None  # None: the GPUs seen in the job's telemetry
    engineer_hours: float = 0.0
    gpu_hour_cost: float | None = None
    engineer_hour_cost: float | None = None
    algorithms: Mapping[str, int] = field(
        default_factory=lambda: {a.name: a.trials for a in DEFAULT_ALGORITHMS}
    )
    #: Where ``duration_hours`` came from: T_DEFAULT, T_CONFIG or T_SLURM (not a key of the file, and not
    #: compared: two settings with the same inputs are equal).
    duration_source: str = field(default=T_DEFAULT, compare=False)

    @property
    def trial_hours(self) -> float:
        return self.trial_minutes / 60.0

    def costs(self) -> Costs:
        return Costs(self.engineer_hours, self.gpu_hour_cost, self.engineer_hour_cost)

    def plan(self) -> Plan:
        """These inputs as the pipeline's plan of one job (G None: the GPUs seen in its telemetry)."""
        return Plan(
            duration_hours=self.duration_hours,
            reuse=self.reuse,
            gpus=self.gpus,
            trial_hours=self.trial_hours,
            costs=self.costs(),
            algorithms=tuple(AlgorithmChoice(name, trials) for name, trials in self.algorithms.items()),
        )


@dataclass(frozen=True)
class Override:
    """Inputs that replace the defaults for jobs whose labels match every pattern."""

    match: Mapping[str, re.Pattern[str]]
    changes: Mapping[str, Any]

    def applies(self, labels: Mapping[str, str]) -> bool:
        return all(pattern.fullmatch(labels.get(key, "")) for key, pattern in self.match.items())


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``zest serve`` reads from its config file."""

    window_seconds: float = DEFAULT_WINDOW_SECONDS  # how much telemetry each cycle's features cover
    #: Export the detail series too: each feature (zest_job_<feature>), per-GPU window means (zest_gpu_*),
    #: each algorithm's Z interval and exploration GPU time, the elapsed time. Off: the series the verdicts
    #: and the dashboards' default panels need, about 25 per job (README, "Metrics").
    detail: bool = False
    defaults: BreakEven = field(default_factory=BreakEven)
    overrides: tuple[Override, ...] = ()

    def for_job(self, job_id: str, scheduled: Mapping[str, float] | None = None) -> BreakEven:
        """The break-even inputs of ``job_id``: defaults, then what its scheduler says of it
        (``scheduled``: ``duration_hours``, ``reuse``), then every matching override in order."""
        settings = self.defaults
        if scheduled:
            settings = replace(
                settings,
                duration_hours=scheduled.get("duration_hours", settings.duration_hours),
                reuse=scheduled.get("reuse", settings.reuse),
                duration_source=T_SLURM if "duration_hours" in scheduled else settings.duration_source,
            )
        if not self.overrides:
            return settings
        labels = job_labels(job_id)
        for override in self.overrides:
            if override.applies(labels):
                settings = replace(settings, **override.changes)
        return settings


def job_labels(job_id: str) -> dict[str, str]:
    """The labels an override matches: ``job_id``, ``namespace`` and ``name``."""
    namespace, _, name = job_id.rpartition("/")
    return {"job_id": job_id, "namespace": namespace, "name": name}


_FIELDS = {f.name for f in fields(BreakEven)} - {"duration_source"}


def load_config(path: Path | None) -> ServeConfig:
    """Read and check a config file; None gives the built-in defaults. Raises :class:`ConfigError`."""
    if path is None:
        return ServeConfig()
    try:
        with Path(path).open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path} ({exc.strerror}); check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML ({exc}); fix the line it names") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text, as TOML must be; save it as UTF-8") from None
    return parse_config(document, str(path))


def parse_config(document: Mapping[str, Any], where: str = "config") -> ServeConfig:
    """The :class:`ServeConfig` of a parsed TOML document; ``where`` names it in errors."""
    unknown = sorted(set(document) - {"serve", "defaults", "override"})
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; use serve, defaults, override")
    serve = _table(document.get("serve", {}), f"{where} [serve]")
    bad = sorted(set(serve) - {"window_seconds", "detail"})
    if bad:
        raise ConfigError(f"{where} [serve]: unknown key(s) {', '.join(bad)}; use window_seconds, detail")
    window = serve.get("window_seconds", DEFAULT_WINDOW_SECONDS)
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window < math.inf:
        raise ConfigError(f"{where} [serve] window_seconds must be a number of seconds > 0, got {window!r}")
    detail = _detail(serve, f"{where} [serve]")
    defaults = _settings(BreakEven(), _table(document.get("defaults", {}), f"{where} [defaults]"), where)
    overrides = []
    entries = document.get("override", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: write overrides as [[override]] tables")
    for number, entry in enumerate(entries, 1):
        place = f"{where} [[override]] #{number}"
        table = dict(_table(entry, place))
        match = _match(table.pop("match", None), place)
        # Checked against the defaults: the override must make sense on its own.
        _settings(defaults, table, place)
        overrides.append(Override(match, _changes(table)))
    return ServeConfig(float(window), detail, defaults, tuple(overrides))


def _detail(serve: Mapping[str, Any], where: str) -> bool:
    """``detail``: whether to serve the detail series (default false)."""
    detail = serve.get("detail", False)
    if not isinstance(detail, bool):
        raise ConfigError(f"{where} detail must be true or false, got {detail!r}")
    return detail


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table of key = value")
    return value


def _match(value: Any, where: str) -> dict[str, re.Pattern[str]]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            f'{where}: needs match = {{ label = "regex", ... }} with labels among {", ".join(MATCH_LABELS)}'
        )
    compiled: dict[str, re.Pattern[str]] = {}
    for key, pattern in value.items():
        if key not in MATCH_LABELS:
            raise ConfigError(f"{where}: cannot match on {key!r}; labels are {', '.join(MATCH_LABELS)}")
        if not isinstance(pattern, str):
            raise ConfigError(f"{where}: match.{key} must be a string (a regular expression)")
        try:
            compiled[key] = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"{where}: match.{key} = {pattern!r} is not a regular expression ({exc})"
            ) from None
    return compiled


def _changes(table: Mapping[str, Any]) -> dict[str, Any]:
    changes = dict(table)
    if "duration_hours" in changes:
        changes["duration_source"] = T_CONFIG
    if "algorithms" in changes:
        changes["algorithms"] = dict(changes["algorithms"])
    for key in ("duration_hours", "reuse", "trial_minutes", "engineer_hours", "gpu_hour_cost"):
        if key in changes:
            changes[key] = float(changes[key])
    if "engineer_hour_cost" in changes:
        changes["engineer_hour_cost"] = float(changes["engineer_hour_cost"])
    return changes


def _settings(base: BreakEven, table: Mapping[str, Any], where: str) -> BreakEven:
    """``base`` with the keys of ``table``, each checked; raises :class:`ConfigError` naming the key."""
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
        )
    for key, value in table.items():
        if key == "algorithms":
            _check_algorithms(value, where)
        elif key == "gpus":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: gpus must be a whole number >= 1, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    settings = replace(base, **_changes(table))
    try:
        settings.plan().job(1.0)
        settings.costs()
        if not (math.isfinite(settings.trial_minutes) and settings.trial_minutes > 0):
            raise InputError(f"trial_minutes must be a finite number > 0, got {settings.trial_minutes:g}")
    except InputError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return settings


def _check_algorithms(value: Any, where: str) -> None:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{where}: algorithms must be a table of name = trials, e.g. {{ heuristic = 30 }}")
    for name, trials in value.items():
        if name not in ALGORITHMS_BY_NAME:
            raise ConfigError(f"{where}: unknown algorithm {name!r}; known: {', '.join(ALGORITHMS_BY_NAME)}")
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"{where}: trials of {name} must be a whole number >= 1, got {trials!r}")
