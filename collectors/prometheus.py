"""Read a job's GPU telemetry from a Prometheus server, aggregated by the server.

:class:`PrometheusSource` asks Prometheus' HTTP API for the per-GPU summary of
:mod:`collectors.schema` directly: every statistic is one PromQL query for the
whole job, evaluated once at the end of the window, so what travels grows with
the number of GPUs, never with the number of samples.

It reads what clusters already scrape (names from :mod:`collectors.metrics`):

* dcgm-exporter series, the job named by ``hpc_job`` (Slurm/HPC) or by the
  Kubernetes ``pod`` and ``namespace`` labels (``exported_pod`` and
  ``exported_namespace`` where the scrape's own pod labels took those names;
  ``pod_name`` and ``pod_namespace`` in older releases): job id
  ``"<namespace>/<pod>"`` or ``"<pod>"``. The host is ``Hostname``,
  ``hostname``, else the scrape's ``instance`` without its port. A MIG
  instance (``GPU_I_ID``) is a GPU of its own, ``"<gpu>/<instance>"``; a job
  that holds instances of a GPU never reads that GPU's whole-device series.
  Where a GPU has no ``DCGM_FI_DEV_GPU_UTIL`` (MIG instances),
  ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` gives its utilization;
* the jobstats exporter's ``nvidia_gpu_*`` series, the job named by ``jobid``.

Which of them holds the job is found from the data. Statistics of a plain
gauge are computed over the raw samples in ``[start, end]``; the idle share,
sums of series (DCGM total memory, NVLink TX+RX) and the first and last sample
times are subqueries at ``step_seconds`` resolution (set it to the scrape
interval). Both ends of the window are inclusive. The first and last sample
times rely on Prometheus' default ``--query.lookback-delta`` of 5 minutes.
Only the statistics zest reads are asked for (:data:`collectors.schema.READ_STATISTICS`:
every signal's mean, the ratios' p10, p50 and p90, memory's max): the summary's
other statistics are NaN.

Where zest's recording rules (:func:`recording_rules`, shipped as
``grafana/zest-gpu.rules.yml``) have recorded 5-minute tiles since the window
began, :meth:`PrometheusSource.summarize_jobs` reads mean, min and max of every
gauge and of the sums of series, the idle share and each GPU's first and last
sample time from the tiles whose evaluation time lies in the window: exact over
those tiles, which span the window shifted back by less than 5 minutes (so
``window_start`` may lie up to 5 minutes before the window). Sample counts,
quantiles and counters stay raw; a GPU is summarized only where it has a raw
sample in the window.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
import pandas as pd
import requests

from collectors import metrics
from collectors.errors import JobNotFound, SourceQueryError, SourceUnavailable
from collectors.metrics import SourceMetric
from collectors.schema import (
    GPU,
    GPU_MODEL,
    HOST,
    IDLE_SHARE,
    IDLE_SM_ACTIVE_RATIO,
    JOB_ID,
    READ_STATISTICS,
    SAMPLES,
    SIGNALS,
    STATISTICS,
    TIMESTAMP,
    WINDOW_END,
    WINDOW_START,
    canonical_signal,
    conform,
    conform_summary,
    mig_gpu,
    screen_summary,
    summary_column,
    whole_gpus_split_into_instances,
)
from collectors.util import iso_utc, one_line, redact_url

DEFAULT_LOOKBACK_SECONDS = 30 * 24 * 3600.0
# Prometheus' default --query.lookback-delta: a sample stays visible this long, so a
# subquery at this step sees every sample at least once.
_LOOKBACK_DELTA_SECONDS = 300
# Widest spread of the GPUs' coarse first-sample times that is refined to the second.
_REFINE_SPREAD_SECONDS = 3600
_ERROR_TEXT_CHARS = 300

_SM_ACTIVE = canonical_signal("sm_active_ratio")
_MEM_USED = canonical_signal("mem_used_bytes")
_MEM_TOTAL = canonical_signal("mem_total_bytes")
_NVLINK = canonical_signal("nvlink_bytes_per_second")
_QUANTILES: Mapping[str, float] = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
assert set(_QUANTILES) | {"mean", "min", "max"} == set(STATISTICS)


def _statistics_of(signal: str) -> tuple[str, ...]:
    """The statistics asked for ``signal``: those zest reads (:data:`collectors.schema.READ_STATISTICS`)."""
    return tuple(st for st in STATISTICS if st in READ_STATISTICS[signal])


@dataclass(frozen=True)
class PrometheusAuth:
    """Credentials for a Prometheus: basic auth (``user`` and ``password``, both or neither) or a bearer
    ``token``. Their repr shows neither the password nor the token."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            missing = "password" if self.password is None else "user"
            raise SourceUnavailable(
                f"Prometheus basic auth needs a user and a password, but the {missing} is missing; "
                "give both or neither"
            )

    @property
    def basic(self) -> tuple[str, str] | None:
        """(user, password) for basic auth; None when there is none."""
        return None if self.user is None or self.password is None else (self.user, self.password)


@dataclass(frozen=True)
class JobSummary:
    """What :meth:`PrometheusSource.summarize_job` found.

    ``summary`` is in the GPU-summary schema (:func:`collectors.schema.conform_summary`);
    ``series_pulled`` counts the series in all query answers and ``queries`` the
    HTTP requests made.
    """

    summary: pd.DataFrame
    notes: list[str]
    series_pulled: int
    queries: int


@dataclass(frozen=True)
class JobSamples:
    """What :meth:`PrometheusSource.job_samples` found: the canonical telemetry frame and notes."""

    frame: pd.DataFrame
    notes: list[str]
    series_pulled: int
    queries: int


@dataclass(frozen=True)
class JobsSummary:
    """What :meth:`PrometheusSource.summarize_jobs` found: the GPU summary of many jobs at once.

    ``summary`` is in the GPU-summary schema, one row per job and GPU (the
    ``job_id`` column tells the jobs apart); ``queries`` does not grow with the
    number of jobs. ``recording_rules_used`` tells whether zest's recording rules
    (:func:`recording_rules`) served some statistic, rather than raw samples.
    """

    summary: pd.DataFrame
    notes: list[str]
    series_pulled: int
    queries: int
    recording_rules_used: bool = False


@dataclass(frozen=True)
class JobStarts:
    """What :meth:`PrometheusSource.first_samples` found: each job's first sample time, in Unix seconds.

    A job it did not find (no memory series in the lookback) is absent; ``queries`` counts the
    HTTP requests made (one).
    """

    first_sample_seconds: dict[str, float]
    series_pulled: int
    queries: int


@dataclass(frozen=True)
class _Signal:
    """How a canonical signal is read: the sum of ``parts`` (and ``optional`` where present) x ``scale``."""

    signal: str
    parts: tuple[str, ...]
    optional: tuple[str, ...] = ()
    scale: float = 1.0
    counter: bool = False  # a cumulative counter: the signal is its per-second rate

    @classmethod
    def of(cls, metric: SourceMetric) -> _Signal:
        return cls(metric.signal, (metric.name,), scale=metric.scale, counter=metric.counter)

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.parts, *self.optional)

    @property
    def raw_gauge(self) -> bool:
        """One gauge series: its statistics come from the raw samples, without a subquery."""
        return len(self.names) == 1 and not self.counter


@dataclass(frozen=True)
class _Family:
    """An exporter's series: the readings of each signal, in order of preference, and its labels."""

    name: str
    readings: tuple[_Signal, ...]
    host_labels: tuple[str, ...]
    gpu_labels: tuple[str, ...]  # first present names the GPU
    mig_label: str
    model_label: str
    #: How the family's series name a job, in order of preference: the labels of one labelling
    #: (the last is the one that must be present; "namespace/pod" joins two).
    job_labellings: tuple[tuple[str, ...], ...] = ()

    @property
    def job_labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(label for labelling in self.job_labellings for label in labelling))

    def job_id(self, labels: Mapping[str, str]) -> str | None:
        """The job id the labels name, in :meth:`PrometheusSource.summarize_job`'s format; None if none."""
        return metrics.job_id_from_labels(labels, self.job_labellings)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for r in self.readings for n in r.names))

    @property
    def identity(self) -> tuple[str, ...]:
        """Labels that tell one GPU of a job from another."""
        return (*self.host_labels, *self.gpu_labels, self.mig_label, self.model_label)

    def preferred(self, present: set[str]) -> dict[str, list[_Signal]]:
        """The usable readings of each signal, in order of preference: a GPU takes the first it has."""
        found: dict[str, list[_Signal]] = {}
        for reading in self.usable(present):
            found.setdefault(reading.signal, []).append(reading)
        return found

    def choose(self, present: set[str]) -> dict[str, _Signal]:
        """The first reading of each signal whose required series are present."""
        chosen: dict[str, _Signal] = {}
        for reading in self.usable(present):
            chosen.setdefault(reading.signal, reading)
        return chosen

    def usable(self, present: set[str]) -> list[_Signal]:
        """Every reading whose required series are present, in order of preference."""
        return [
            _Signal(
                reading.signal,
                reading.parts,
                tuple(n for n in reading.optional if n in present),
                reading.scale,
                reading.counter,
            )
            for reading in self.readings
            if set(reading.parts) <= present
        ]

    def anchor(self, present: set[str], chosen: Mapping[str, _Signal]) -> str:
        """The series that counts samples and dates the window: memory used, which every exporter has."""
        if _MEM_USED in chosen:
            return chosen[_MEM_USED].parts[0]
        return next(n for n in self.names if n in present)


_DCGM = _Family(
    name="dcgm-exporter",
    readings=(
        *(_Signal.of(m) for m in metrics.DCGM_METRICS),
        # Where a GPU has no GPU_UTIL (a MIG instance), its graphics engine's activity stands in.
        _Signal.of(metrics.DCGM_GR_ENGINE_ACTIVE),
        _Signal(
            _MEM_TOTAL, (metrics.DCGM_FB_USED, metrics.DCGM_FB_FREE), (metrics.DCGM_FB_RESERVED,), metrics.MIB
        ),
        _Signal(_NVLINK, metrics.DCGM_NVLINK_BYTES),
        _Signal.of(metrics.DCGM_NVLINK_TOTAL_METRIC),
    ),
    host_labels=metrics.DCGM_STORED_HOST_LABELS,
    gpu_labels=(metrics.DCGM_GPU_LABEL, metrics.DCGM_UUID_LABEL),
    mig_label=metrics.DCGM_MIG_INSTANCE_LABEL,
    model_label=metrics.DCGM_MODEL_LABEL,
    job_labellings=metrics.DCGM_STORED_JOB_LABELLINGS,
)
_JOBSTATS = _Family(
    name="jobstats exporter",
    readings=tuple(_Signal.of(m) for m in metrics.JOBSTATS_METRICS),
    host_labels=metrics.JOBSTATS_HOST_LABELS,
    gpu_labels=(*metrics.JOBSTATS_GPU_LABELS, metrics.JOBSTATS_UUID_LABEL),
    mig_label=metrics.JOBSTATS_MIG_INSTANCE_LABEL,
    model_label=metrics.JOBSTATS_MODEL_LABEL,
    job_labellings=metrics.JOBSTATS_JOB_LABELLINGS,
)
_FAMILIES = (_DCGM, _JOBSTATS)

# --- recording rules --------------------------------------------------------------------------
#: Statistics a cycle reads from recorded tiles where they exist: those that combine exactly.
_RECORDED_STATISTICS = ("mean", "min", "max")
#: A tile's range: the rule interval less 1 ms, so that Prometheus 2's closed ranges never see a
#: sample on a tile boundary twice (timestamps are whole milliseconds).
_TILE = f"{metrics.RECORDING_INTERVAL_SECONDS * 1000 - 1}ms"


def _recorded_readings() -> list[tuple[_Family, _Signal]]:
    """The readings recording rules keep tiles of: every family's one-gauge readings and named sums."""
    return [
        (family, reading)
        for family in _FAMILIES
        for reading in family.readings
        if _recorded_source(reading) is not None
    ]


def _recorded_source(reading: _Signal) -> str | None:
    """The name whose tiles the rules record of ``reading``: its gauge's, or its sum's
    (:data:`metrics.RECORDED_SUMS`); None for a reading they do not record."""
    if reading.raw_gauge:
        return reading.parts[0]
    return None if reading.counter else metrics.RECORDED_SUMS.get(reading.parts)


def _recorded_names(family: _Family) -> list[str]:
    """Every recorded series name of ``family``."""
    found = []
    for owner, reading in _recorded_readings():
        source = _recorded_source(reading)
        if owner is family and source is not None:
            found += [metrics.recorded_name(source, op) for op in metrics.RECORDED_OPERATIONS]
            found += [metrics.recorded_name(source, op) for op in _extra_operations(reading)]
    return list(dict.fromkeys(found))


def _extra_operations(reading: _Signal) -> tuple[str, ...]:
    """What the rules record of ``reading`` besides :data:`metrics.RECORDED_OPERATIONS`."""
    if reading.signal == _SM_ACTIVE:
        return metrics.RECORDED_IDLE_OPERATIONS
    if reading.signal == _MEM_USED:
        return metrics.RECORDED_EDGE_OPERATIONS
    return ()


def recording_rules() -> list[dict[str, Any]]:
    """The rule group of ``grafana/zest-gpu.rules.yml`` as YAML-ready dicts.

    Every rule keeps all labels of its source series (GPU, host, job), so a cycle selects recorded
    series with the same matchers as raw ones. Per 5-minute tile: sum, count, min and max of each
    gauge; for SM activity also the steps (at dcgm-exporter's 30 s scrape) with a fresh sample and
    those below the idle threshold, as the raw idle query counts them; for memory used the time of
    the first and of the last fresh sample at those steps; for sums of series (DCGM total memory,
    NVLink TX + RX) sum, count, min and max of the sum at those steps. One group for every family:
    Prometheus offsets each group's evaluations by a hash of its name, and one offset keeps every
    signal's tiles on the same boundaries.
    """
    step = metrics.RECORDED_IDLE_STEP_SECONDS
    rules: list[dict[str, str]] = []
    for _, reading in _recorded_readings():
        name = reading.parts[0]
        source = _recorded_source(reading)
        assert source is not None
        if not reading.raw_gauge:
            # Each step's sum of the fresh parts; "without ()" keeps every label (a GPU's parts share them).
            summed = f"sum without () ({_fresh(_name_selector(reading.names, ()), step)})[{_TILE}:{step}s]"
            rules += [
                {"record": metrics.recorded_name(source, op), "expr": f"{op}_over_time({summed})"}
                for op in metrics.RECORDED_OPERATIONS
            ]
            continue
        rules += [
            {"record": metrics.recorded_name(name, op), "expr": f"{op}_over_time({name}[{_TILE}])"}
            for op in metrics.RECORDED_OPERATIONS
        ]
        if reading.signal == _SM_ACTIVE:
            fresh = _fresh(name, step)
            threshold = IDLE_SM_ACTIVE_RATIO / reading.scale
            rules += [
                {
                    "record": metrics.recorded_name(name, "steps"),
                    "expr": f"count_over_time({fresh}[{_TILE}:{step}s])",
                },
                {
                    "record": metrics.recorded_name(name, "idle_steps"),
                    "expr": f"sum_over_time(({fresh} < bool {threshold!r})[{_TILE}:{step}s])",
                },
            ]
        if reading.signal == _MEM_USED:
            # At a step with a fresh sample, timestamp() is that sample's time.
            stamped = f"(timestamp({name}) and {_fresh(name, step)})[{_TILE}:{step}s]"
            rules += [
                {"record": metrics.recorded_name(name, "first"), "expr": f"min_over_time({stamped})"},
                {"record": metrics.recorded_name(name, "last"), "expr": f"max_over_time({stamped})"},
            ]
    interval = f"{metrics.RECORDING_INTERVAL_SECONDS // 60}m"
    return [{"name": "zest-gpu", "interval": interval, "rules": rules}]


def _recorded_statistic(
    name: str, statistic: str, matchers: Sequence[_Matcher], width: float, by: str
) -> str:
    """PromQL combining the recorded tiles of series ``name`` whose evaluation time lies in the window into
    ``statistic`` (mean, min, max, the idle share, or the first or last sample time): exact over those
    tiles."""

    def tiles(op: str, over: str = "sum") -> str:
        selector = _selector(metrics.recorded_name(name, op), matchers)
        return f"{over} by ({by}) ({over}_over_time({selector}[{_duration(width)}]))"

    if statistic == "mean":
        return f"{tiles('sum')} / {tiles('count')}"
    if statistic in ("min", "max"):
        return tiles(statistic, statistic)
    if statistic == WINDOW_START:
        return tiles("first", "min")
    if statistic == WINDOW_END:
        return tiles("last", "max")
    assert statistic == IDLE_SHARE
    return f"{tiles('idle_steps')} / {tiles('steps')}"


@dataclass(frozen=True)
class _Candidate:
    """One way a job id may be labelled: a family and the label matchers that select the job."""

    family: _Family
    matchers: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        return ", ".join(_matcher(label, value) for label, value in self.matchers)


class _Regex(str):
    """A label value matched as a regular expression (``=~``) rather than exactly."""

    __slots__ = ()


def _any_of(values: Iterable[str], suffix: str = "") -> _Regex:
    """A regex matching exactly one of ``values`` (as literals), then an optional ``suffix`` pattern."""
    return _Regex(f"({'|'.join(re.escape(v) for v in values)}){suffix}")


def _placement_candidates(placement: Mapping[str, Sequence[int]]) -> list[_Candidate]:
    """Series without job labels, selected by the job's nodes (short names, with or without a domain or,
    in the scrape's ``instance``, a port) and, where every node holds the same GPU indices, by those."""
    hosts = sorted({node.split(".", 1)[0] for node in placement})
    index_sets = {tuple(sorted(indices)) for indices in placement.values()}
    indices = next(iter(index_sets)) if len(index_sets) == 1 else ()
    gpu = () if not indices else ((metrics.DCGM_GPU_LABEL, _any_of(map(str, indices))),)
    minor = () if not indices else ((metrics.JOBSTATS_GPU_LABELS[0], _any_of(map(str, indices))),)
    host_pattern = r"(\..*)?(:[0-9]+)?"
    found = [_Candidate(_DCGM, ((label, _any_of(hosts, host_pattern)), *gpu)) for label in _DCGM.host_labels]
    found += [
        _Candidate(_JOBSTATS, ((label, _any_of(hosts, host_pattern)), *minor))
        for label in _JOBSTATS.host_labels
    ]
    return found


def _scrape_pod_guard(labelling: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Matchers that keep a labelling off series whose labels of that name are the scrape's: the plain
    ``namespace``/``pod`` name a job only on series without ``exported_pod``."""
    if tuple(labelling) != metrics.DCGM_SCRAPE_POD_LABELLING:
        return ()
    return ((metrics.DCGM_EXPORTED_JOB_LABELLING[-1], ""),)


def _candidates(job_id: str) -> list[_Candidate]:
    """The labellings tried for ``job_id``, in order of preference: a ``namespace/pod`` id by a labelling's
    two labels, another id by its last label alone (``hpc_job`` takes any id whole)."""
    found = []
    namespace, slash, pod = job_id.rpartition("/")
    for labelling in _DCGM.job_labellings:
        *outer, inner = labelling
        if not outer or not slash:
            matchers: tuple[tuple[str, str], ...] = ((inner, job_id),)
        elif namespace and pod:
            matchers = ((outer[0], namespace), (inner, pod))
        else:
            continue
        found.append(_Candidate(_DCGM, (*matchers, *_scrape_pod_guard(labelling))))
    found.append(_Candidate(_JOBSTATS, ((metrics.JOBSTATS_JOB_LABEL, job_id),)))
    return found


def _quote(value: str) -> str:
    """``value`` as a PromQL string literal: whatever it holds, it matches only itself.

    PromQL strings take Go's escapes; JSON's (``\\"``, ``\\\\``, ``\\n``, ``\\u00XX``) are a subset.
    """
    return json.dumps(value, ensure_ascii=False)


#: A label matcher: the label must equal the value, or, for None, be present (non-empty).
_Matcher = tuple[str, str | None]


def _matcher(label: str, value: str | None) -> str:
    if value is None:
        return f'{label}!=""'
    return f"{label}{'=~' if isinstance(value, _Regex) else '='}{_quote(value)}"


def _selector(name: str, matchers: Iterable[_Matcher]) -> str:
    inner = ",".join(_matcher(label, value) for label, value in matchers)
    return f"{name}{{{inner}}}"


def _duration(seconds: float) -> str:
    """A PromQL duration in whole milliseconds (at least 1 ms)."""
    return f"{max(round(seconds * 1000), 1)}ms"


def _unix(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _name_selector(names: Iterable[str], matchers: Iterable[_Matcher]) -> str:
    """A selector of the series named ``names`` that carry ``matchers``."""
    inner = [f"__name__=~{_name_regex(names)}", *(_matcher(label, value) for label, value in matchers)]
    return "{" + ",".join(inner) + "}"


def _fresh(selector: str, step_seconds: float) -> str:
    # The sample taken since the previous step, if any: a plain selector would repeat a
    # series' last value for the 5-minute lookback after it ends, and a range of a
    # whole step would see a sample on its closed left end twice.
    return f"last_over_time({selector}[{_duration(step_seconds - 0.001)}])"


def _per_step(reading: _Signal, matchers: Sequence[_Matcher], step_seconds: float, by: str) -> str:
    """PromQL for the raw (unscaled) value of ``reading`` at each step of a subquery."""
    if reading.counter:
        # rate() needs two samples in its range: four scrape intervals leave room for a missed one.
        return f"rate({_selector(reading.parts[0], matchers)}[{_duration(4 * step_seconds)}])"
    if len(reading.names) == 1:
        return _fresh(_selector(reading.parts[0], matchers), step_seconds)
    # Summing by GPU adds whichever parts exist (an absent optional one adds nothing),
    # and costs a fraction of the label matching a binary "+" does at every step.
    return f"sum by ({by}) ({_fresh(_name_selector(reading.names, matchers), step_seconds)})"


def _parse_value(sample: Sequence[Any]) -> float:
    return float(sample[1])  # Prometheus writes "NaN", "+Inf", "-Inf" as float() reads them


class _Tally:
    """Counts and notes of one call, kept by the threads that run its queries."""

    def __init__(self) -> None:
        self.queries = 0
        self.series = 0
        self.notes: list[str] = []
        self.recorded = False  # whether a recording rule's series served a statistic
        self._lock = threading.Lock()

    def count(self, *, queries: int = 0, series: int = 0, notes: Iterable[str] = ()) -> None:
        with self._lock:
            self.queries += queries
            self.series += series
            self.notes.extend(notes)


@dataclass(frozen=True)
class _Located:
    """A job found in Prometheus: how it is labelled, what it has, each GPU's first and last sample."""

    candidate: _Candidate
    chosen: dict[str, _Signal]
    anchor: str
    first: dict[tuple[str, ...], float]
    last: dict[tuple[str, ...], float]
    start: float  # the window, Unix seconds
    end: float
    #: Each signal's usable readings, in order of preference: a GPU takes the first it has.
    preferred: dict[str, list[_Signal]] = field(default_factory=dict)
    #: Identities of whole-GPU series left out: the job holds MIG instances of those GPUs.
    left_out: frozenset[tuple[str, ...]] = frozenset()


@dataclass(frozen=True)
class _Planned:
    """One query of a summary: the column it fills and the scale to base units."""

    column: str
    query: str
    purpose: str
    scale: float = 1.0
    #: In a batched summary, the statistic's reading (its index in the usable readings); None for a column.
    rank: int | None = None


@dataclass(repr=False)
class PrometheusSource:
    """A Prometheus server holding dcgm-exporter or jobstats-exporter series.

    ``url`` is the server's base URL (``http://host:9090``, a path prefix allowed).
    Basic-auth credentials in it (``http://user:pass@host:9090``), else those of
    ``auth``, are sent with every request, else ``auth``'s bearer token; none of
    them is ever shown: after construction ``url`` holds the address without
    credentials.
    ``timeout_seconds`` bounds each request; ``step_seconds`` is the subquery
    resolution (the exporter's scrape interval, 30 s by default in dcgm-exporter);
    ``lookback_seconds`` is how far back a job is looked for when no window is given;
    ``max_concurrent_queries`` statistics are asked for at once.
    """

    url: str
    timeout_seconds: float = 10.0
    session: requests.Session | None = None
    step_seconds: float = 30.0
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS
    max_concurrent_queries: int = 4
    auth: PrometheusAuth | None = None

    def __post_init__(self) -> None:
        given, shown = self.url, redact_url(self.url)
        parts = urlsplit(given)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceUnavailable(
                f"Prometheus URL {shown!r} is not an http(s) address; give one like http://host:9090"
            )
        if "@" in given.partition("//")[2][len(parts.netloc) :]:
            # Either a password holding an unescaped "/", "?" or "#", or an odd path: which, no one can tell.
            raise SourceUnavailable(
                f"Prometheus URL {shown!r} holds an '@' after its host; percent-encode '/', '?', '#' and '@' "
                "in a password (%2F, %3F, %23, %40), or give it in ZEST_PROMETHEUS_PASSWORD"
            )
        netloc = parts.netloc.rpartition("@")[2]
        self.url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._auth: tuple[str, str] | None = None
        self._headers: dict[str, str] = {}
        auth = self.auth or PrometheusAuth()
        if parts.username is not None:
            self._auth = (unquote(parts.username), unquote(parts.password or ""))
        elif auth.basic is not None:
            self._auth = auth.basic
        elif auth.token:
            self._headers["Authorization"] = f"Bearer {auth.token}"
        if self.session is None:
            self.session = requests.Session()

    def __repr__(self) -> str:
        return f"PrometheusSource(url={self.url!r}, timeout_seconds={self.timeout_seconds!r})"

    # --- public API -------------------------------------------------------------------------

    @property
    def display_url(self) -> str:
        """The server's address as it may be shown: never with credentials."""
        return self.url

    def summarize_job(
        self,
        job_id: str,
        start: datetime | None = None,
        end: datetime | None = None,
        placement: Mapping[str, Sequence[int]] | None = None,
    ) -> JobSummary:
        """Per-GPU window statistics of job ``job_id`` between ``start`` and ``end`` (both inclusive).

        A missing ``start`` or ``end`` becomes the job's first or last sample
        visible in Prometheus (looking back ``lookback_seconds`` from ``end`` or
        now). Naive datetimes are read as UTC. Raises :class:`JobNotFound` when
        no series of the job has a sample in the window.
        """
        tally = _Tally()
        job = self._locate(job_id, start, end, tally, placement)
        family, matchers = job.candidate.family, job.candidate.matchers
        chosen, anchor = job.chosen, job.anchor
        at, width = job.end, job.end - job.start
        by = ",".join(family.identity)
        plan = [
            _Planned(
                SAMPLES,
                f"sum by ({by}) (count_over_time({_selector(anchor, matchers)}[{_duration(width)}]))",
                f"counting {anchor} samples",
            )
        ]
        for readings in job.preferred.values():
            plan += [
                self._preferred_statistic(readings, statistic, matchers, width, by)
                for statistic in _statistics_of(readings[0].signal)
            ]
        if _SM_ACTIVE in chosen:
            plan.append(
                _Planned(
                    IDLE_SHARE,
                    self._idle_query(chosen[_SM_ACTIVE], matchers, width, by),
                    "reading the idle share",
                )
            )
        else:
            tally.notes.append("idle share needs SM activity, which this job lacks: it is NaN")
        tally.notes.extend(_stand_in_notes(job.preferred))
        answers = self._run(plan, at, family, tally)
        answers = {
            column: {key: value for key, value in values.items() if key not in job.left_out}
            for column, values in answers.items()
        }
        columns = {WINDOW_START: job.first, WINDOW_END: job.last, **answers}
        summary, screened = screen_summary(_frame(columns, family, job_id))
        tally.notes.extend(screened)
        return JobSummary(summary, tally.notes, tally.series, tally.queries)

    def job_samples(
        self,
        job_id: str,
        start: datetime | None = None,
        end: datetime | None = None,
        placement: Mapping[str, Sequence[int]] | None = None,
    ) -> JobSamples:
        """Every sample of job ``job_id`` in the window, as the canonical telemetry frame.

        The window is found as in :meth:`summarize_job`. Unlike it, what travels
        grows with the samples: one range query per series name. Sums (DCGM total
        memory, NVLink TX+RX) add the parts scraped at the same instant; a counter
        is read as its rate at ``step_seconds`` steps.
        """
        tally = _Tally()
        job = self._locate(job_id, start, end, tally, placement)
        family, matchers = job.candidate.family, job.candidate.matchers
        width = _duration(job.end - job.start)
        readings = [reading for preferred in job.preferred.values() for reading in preferred]
        plan: list[tuple[str, str]] = []  # (series name, or "rate:" and a counter's name, query)
        for reading in readings:
            if reading.counter:
                per_step = _per_step(reading, matchers, self.step_seconds, ",".join(family.identity))
                plan.append((_rate_key(reading), f"({per_step})[{width}:{_duration(self.step_seconds)}]"))
            else:
                plan += [(name, f"{_selector(name, matchers)}[{width}]") for name in reading.names]
        plan = list(dict.fromkeys(plan))

        def one(item: tuple[str, str]) -> list[dict[str, Any]]:
            return self._query(item[1], job.end, f"reading samples of {item[0]}", tally, "matrix")

        with ThreadPoolExecutor(max_workers=max(1, self.max_concurrent_queries)) as pool:
            answers = dict(zip((name for name, _ in plan), pool.map(one, plan), strict=True))

        def key_of(item: Mapping[str, Any]) -> tuple[str, ...]:
            return tuple(item["metric"].get(label, "") for label in family.identity)

        def parts(reading: _Signal) -> tuple[str, ...]:
            return (_rate_key(reading),) if reading.counter else reading.names

        # Each GPU takes the first reading of a signal whose required series it has.
        taken: dict[tuple[str, tuple[str, ...]], _Signal] = {}
        for reading in readings:
            required = (_rate_key(reading),) if reading.counter else reading.parts
            has = set.intersection(*({key_of(item) for item in answers[name]} for name in required))
            for key in has - job.left_out:
                taken.setdefault((reading.signal, key), reading)
        rows: dict[tuple[tuple[str, ...], float], dict[str, float]] = {}
        for reading in readings:
            for name in parts(reading):
                for item in answers[name]:
                    key = key_of(item)
                    if taken.get((reading.signal, key)) is not reading:
                        continue
                    for stamp, value in item["values"]:
                        row = rows.setdefault((key, float(stamp)), {})
                        # Parts of a sum share their scrape's timestamp.
                        row[reading.signal] = row.get(reading.signal, 0.0) + float(value) * reading.scale
        records: list[dict[str, object]] = []
        for (key, stamp), signals in rows.items():
            labels = dict(zip(family.identity, key, strict=True))
            records.append({TIMESTAMP: stamp, **_identity(labels, family, job_id), **signals})
        frame = pd.DataFrame(records, columns=[TIMESTAMP, HOST, GPU, JOB_ID, GPU_MODEL, *job.preferred])
        milliseconds = np.round(frame[TIMESTAMP].to_numpy(dtype="float64") * 1000)
        frame[TIMESTAMP] = pd.to_datetime(milliseconds, unit="ms", utc=True)
        tally.notes.extend(_stand_in_notes(job.preferred))
        return JobSamples(conform(frame), tally.notes, tally.series, tally.queries)

    def summarize_jobs(
        self, window_seconds: float, end: datetime | None = None, job_ids: Sequence[str] | None = None
    ) -> JobsSummary:
        """Per-GPU window statistics of every job with samples in the ``window_seconds`` before ``end``
        (with ``job_ids``: of those jobs, and possibly others whose labels look alike; a replica serving
        a shard of the fleet asks only for its jobs).

        Batched: per exporter family present, one query per statistic and
        reading covers every job (the job labellings that name any series
        joined by ``or``), so the number of queries is fixed (about 50 per
        family) whatever the number of jobs. Statistics are those of
        :meth:`summarize_job` over the same window (the tiles of zest's
        recording rules, where they cover it, serve some: see the module's
        docstring); ``window_start`` and ``window_end`` are each GPU's first and
        last sample in it, found at ``step_seconds`` resolution. ``end``
        defaults to now. A series that names no job is left out. An empty
        summary when no job has samples.
        """
        if not (math.isfinite(window_seconds) and window_seconds > 0):
            raise SourceQueryError(f"the window must be a positive number of seconds, got {window_seconds}")
        tally = _Tally()
        hi = _unix(end) if end is not None else datetime.now(UTC).timestamp()
        lo = hi - window_seconds
        frames = []
        for family in _FAMILIES:
            columns = self._summarize_family(family, lo, hi, tally, job_ids)
            if columns:
                frames.append(_jobs_frame(columns, family, tally))
        if not frames:
            tally.notes.append(f"no job has GPU series between {iso_utc(lo)} and {iso_utc(hi)}")
            return JobsSummary(
                conform_summary(pd.DataFrame({GPU: []})),
                tally.notes,
                tally.series,
                tally.queries,
                tally.recorded,
            )
        summary = conform_summary(pd.concat(frames, ignore_index=True))
        summary = summary.sort_values([JOB_ID, HOST, GPU], kind="stable", ignore_index=True)
        summary, screened = screen_summary(summary)
        tally.notes.extend(screened)
        return JobsSummary(summary, tally.notes, tally.series, tally.queries, tally.recorded)

    def _summarize_family(
        self, family: _Family, lo: float, hi: float, tally: _Tally, job_ids: Sequence[str] | None
    ) -> dict[str, dict[tuple[str, ...], float]]:
        """Columns of the GPU summary of every job of ``family`` (or of ``job_ids``), keyed by (job labels,
        identity) values."""
        values = None if job_ids is None else _job_label_values(job_ids)
        labellings: list[tuple[_Matcher, ...]] = [
            ((labelling[-1], values), *_scrape_pod_guard(labelling)) for labelling in family.job_labellings
        ]
        # Which series names are present, over all jobs, by each labelling: GETs whose URLs need not carry
        # the ids. A labelling that names no job's series is left out of the queries: it would select
        # nothing, and its "or" would still hash every series of the others.
        listing = [((label[-1], None), *_scrape_pod_guard(label)) for label in family.job_labellings]
        found = [
            set(
                self._label_values(
                    [
                        ("match[]", _name_selector((*family.names, *_recorded_names(family)), m)),
                        ("start", f"{lo:.3f}"),
                        ("end", f"{hi:.3f}"),
                    ],
                    f"listing the {family.name} series of running jobs",
                    tally,
                )
            )
            for m in listing
        ]
        used = [index for index, names in enumerate(found) if names & set(family.names)]
        if not used:
            return {}
        labellings = [labellings[index] for index in used]
        listing = [listing[index] for index in used]
        names = set().union(*(found[index] for index in used))
        present = names & set(family.names)
        covered = self._covering_recorded(family, names, listing, lo, hi, tally)
        chosen = family.choose(present)
        anchor = family.anchor(present, chosen)
        keys = (*family.job_labels, *family.identity)
        by = ",".join(keys)
        width = hi - lo

        def joined(query: Callable[[Sequence[_Matcher]], str]) -> str:
            return " or ".join(f"({query(m)})" for m in labellings)

        def count(m: Sequence[_Matcher]) -> str:
            return f"sum by ({by}) (count_over_time({_selector(anchor, m)}[{_duration(width)}]))"

        span = f"[{_duration(width)}:{_duration(self.step_seconds)}]"

        def first(m: Sequence[_Matcher]) -> str:
            # A step's timestamp() is the latest sample up to it: the first steps may see one before lo.
            return f"min by ({by}) (min_over_time((timestamp({_selector(anchor, m)}) >= {lo:.3f}){span}))"

        def last(m: Sequence[_Matcher]) -> str:
            # Steps end at hi; a GPU whose latest sample lies before lo has no count and is dropped below.
            return f"max by ({by}) (max_over_time(timestamp({_selector(anchor, m)}){span}))"

        # Jobs may differ in which reading of a signal they have (NVLink from the DCP pair or the
        # total): every usable reading is asked for, each by its rank, and the best one per GPU kept.
        readings = family.usable(present)

        # The tiles serve a family where the anchor's are there (its first and last sample times
        # included: rules of an older zest lack them): then the mean, min and max of every gauge they
        # record, and the idle share where its rules count steps of this step.
        anchor_tiles = {
            metrics.recorded_name(anchor, op)
            for op in (*metrics.RECORDED_OPERATIONS, *metrics.RECORDED_EDGE_OPERATIONS)
        }
        tiles = anchor_tiles <= covered
        # A sum's tiles hold its steps at the idle rules' step: they stand for the raw query at that step.
        sums_recorded = self.step_seconds == metrics.RECORDED_IDLE_STEP_SECONDS
        recorded = {
            source
            for reading in readings
            if tiles
            and (source := _recorded_source(reading)) is not None
            and (reading.raw_gauge or sums_recorded)
            and all(metrics.recorded_name(source, op) in covered for op in metrics.RECORDED_OPERATIONS)
        }

        def stat_query(reading: _Signal, statistic: str, m: Sequence[_Matcher]) -> str:
            source = _recorded_source(reading)
            if source in recorded and statistic in _RECORDED_STATISTICS:
                assert source is not None
                return _recorded_statistic(source, statistic, m, width, by)
            return self._statistic_query(reading, statistic, m, width, by)

        plan = [_Planned(SAMPLES, joined(count), f"counting {anchor} samples of every job")]
        # One query per statistic and reading: joining them all by "or" cost Prometheus more than evaluating
        # them (each "or" hashes every series of its left side, which grows with each reading).
        plan += [
            _Planned(
                statistic,
                joined(functools.partial(stat_query, reading, statistic)),
                f"reading {statistic} of {'+'.join(reading.names)} of every job",
                rank=rank,
            )
            for rank, reading in enumerate(readings)
            for statistic in _statistics_of(reading.signal)
        ]
        idle_recorded = False
        if _SM_ACTIVE in chosen:
            sm = chosen[_SM_ACTIVE]
            idle_names = {metrics.recorded_name(sm.parts[0], op) for op in metrics.RECORDED_IDLE_OPERATIONS}
            # The idle rules count steps at a fixed step: they stand for the raw query at that step only.
            idle_recorded = (
                tiles
                and sm.raw_gauge
                and idle_names <= covered
                and self.step_seconds == metrics.RECORDED_IDLE_STEP_SECONDS
            )
            if idle_recorded:
                idle = joined(lambda m: _recorded_statistic(sm.parts[0], IDLE_SHARE, m, width, by))
            else:
                idle = joined(lambda m: self._idle_query(sm, m, width, by))
            plan.append(_Planned(IDLE_SHARE, idle, "reading every job's idle share"))
        if tiles:
            tally.recorded = True
            tally.count(
                notes=[
                    f"{family.name}: the means (memory's max too) of {', '.join(sorted(recorded))}"
                    f"{', the idle share' if idle_recorded else ''} and each GPU's first and last sample "
                    f"read from zest's recording rules ({metrics.RECORDING_INTERVAL_SECONDS // 60}-minute "
                    "tiles); sample counts and quantiles from raw samples"
                ]
            )
            plan += [
                _Planned(
                    column,
                    joined(functools.partial(_recorded_statistic, anchor, column, width=width, by=by)),
                    f"reading each GPU's {which} sample from the tiles",
                )
                for column, which in ((WINDOW_START, "first"), (WINDOW_END, "last"))
            ]
        else:
            tally.count(notes=[f"{family.name}: no zest recording rules cover the window: raw samples read"])
            plan += [
                _Planned(WINDOW_START, joined(first), "finding each GPU's first sample"),
                _Planned(WINDOW_END, joined(last), "finding each GPU's last sample"),
            ]

        # Each answer keyed by the GPU's label values as it comes, while Prometheus works on the others.
        absent = ("",) * len(keys)
        answers: dict[int, dict[tuple[str, ...], float]] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.max_concurrent_queries)) as pool:
            asked = {pool.submit(self._query, p.query, hi, p.purpose, tally): i for i, p in enumerate(plan)}
            for done in as_completed(asked):
                answers[asked[done]] = {
                    tuple(map(item["metric"].get, keys, absent)): item["value"][1] for item in done.result()
                }
        # A GPU takes, for every statistic, the first of a signal's readings it has in any answer (only
        # signals with more than one usable reading need telling).
        several = {r.signal for r in readings if sum(other.signal == r.signal for other in readings) > 1}
        owned: dict[int, set[tuple[str, ...]]] = {}
        for index, planned in enumerate(plan):
            if planned.rank is not None and readings[planned.rank].signal in several:
                owned.setdefault(planned.rank, set()).update(answers[index])
        columns: dict[str, dict[tuple[str, ...], float]] = {}
        for index, planned in enumerate(plan):
            answer = answers[index]
            if planned.rank is None:
                columns[planned.column] = answer
                continue
            reading = readings[planned.rank]
            taken = set().union(
                *(owned[r] for r in range(planned.rank) if readings[r].signal == reading.signal)
            )  # empty for a signal with one reading
            scale = reading.scale
            columns.setdefault(summary_column(reading.signal, planned.column), {}).update(
                (key, value * scale) for key, value in answer.items() if key not in taken
            )
        # Only GPUs with a raw sample in the window: subqueries' steps (and the first tile) reach back
        # before it, so a job that ended just before it would otherwise show.
        kept = set(columns.get(SAMPLES, {}))
        if tiles:
            # A GPU with raw samples but no tile yet (its job began less than one tile ago) would have
            # quantiles without mean: it is left out until the rules have recorded it.
            sampled, kept = kept, kept & columns.get(WINDOW_START, {}).keys()
            if len(kept) < len(sampled):
                tally.notes.append(
                    f"{family.name}: {len(sampled) - len(kept)} GPU(s) of jobs younger than one "
                    f"{metrics.RECORDING_INTERVAL_SECONDS // 60}-minute tile left out until the recording "
                    "rules have recorded them"
                )
        columns = {
            column: {key: value for key, value in values.items() if key in kept}
            for column, values in columns.items()
        }
        if SAMPLES not in columns:
            return {}
        missing = [s for s in SIGNALS if s not in chosen]
        if missing:
            tally.notes.append(f"{family.name}: no series for {', '.join(missing)}: they are NaN")
        return columns

    def _covering_recorded(
        self,
        family: _Family,
        names: set[str],
        listing: Sequence[Sequence[_Matcher]],
        lo: float,
        hi: float,
        tally: _Tally,
    ) -> set[str]:
        """The recorded series of ``family`` that cover ``[lo, hi]``: present in it and already in its first
        two tiles, so that rules deployed (or backfilled) after the window began are not read as if they
        covered it. One cheap listing, asked only where recorded series are present at all."""
        present = names & set(_recorded_names(family))
        if not present:
            return set()
        early = min(hi, lo + 2 * metrics.RECORDING_INTERVAL_SECONDS)
        found = self._label_values(
            [
                *(("match[]", _name_selector(sorted(present), m)) for m in listing),
                ("start", f"{lo:.3f}"),
                ("end", f"{early:.3f}"),
            ],
            f"checking that zest's {family.name} recording rules cover the window",
            tally,
        )
        return set(found) & present

    def running_jobs(self) -> list[str]:
        """Ids of the jobs whose GPU series have a sample now (within Prometheus' lookback), sorted.

        One query: ``hpc_job`` values, ``namespace/pod`` of Kubernetes pods and the
        jobstats ``jobid`` values, in :meth:`summarize_job`'s id format. It reads the
        memory-used series only, which every exporter has and which a batched
        summary counts a GPU's samples by (a fifteenth of the series to look up).
        """
        tally = _Tally()
        now = datetime.now(UTC).timestamp()
        result = self._query(self._jobs_query(anchor=True), now, "listing running jobs", tally)
        return sorted({job for job in _job_ids([item["metric"] for item in result]) if job is not None})

    def first_samples(self, job_ids: Iterable[str], end: datetime | None = None) -> JobStarts:
        """When each of ``job_ids`` began: the first sample of its current run, looking back
        ``lookback_seconds`` from ``end`` (default now); one query for all of them.

        Found at a 5-minute step (the lookback delta), never before the true first sample and at most
        5 minutes after it, so a time elapsed since it is a lower bound. A run begins after a gap of
        more than 5 minutes in the job's memory series (a job id used again, e.g. a pod's name); a
        job running since before the lookback gets the lookback's first step.
        """
        wanted = sorted(set(job_ids))
        tally = _Tally()
        if not wanted:
            return JobStarts({}, 0, 0)
        hi = _unix(end) if end is not None else datetime.now(UTC).timestamp()
        delta = _LOOKBACK_DELTA_SECONDS
        span = f"[{_duration(self.lookback_seconds)}:{delta}s]"
        present = self._jobs_query(wanted, anchor=True)
        before = self._jobs_query(wanted, anchor=True, offset_seconds=delta)
        # The latest step the job is seen at and not 5 minutes before (its run's start), else its first.
        query = (
            f"max_over_time(timestamp(({present}) unless ({before})){span}) "
            f"or min_over_time(timestamp({present}){span})"
        )
        result = self._query(query, hi, "finding when each new job began", tally)
        found: dict[str, float] = {}
        labelsets: list[Mapping[str, str]] = [item["metric"] for item in result]
        for job_id, item in zip(_job_ids(labelsets), result, strict=True):
            value = _parse_value(item["value"])
            if job_id in wanted and math.isfinite(value):
                found[job_id] = min(value, found.get(job_id, value))
        return JobStarts(found, tally.series, tally.queries)

    def _jobs_query(
        self, job_ids: Sequence[str] | None = None, *, anchor: bool = False, offset_seconds: float = 0
    ) -> str:
        """An instant vector with one element per job labelling of every running job's series, as
        :func:`_job_ids` reads them back. With ``job_ids``, only series whose job label may name one of
        them (a superset: the ids read back tell); ``anchor``: only the memory series, which every
        exporter has; ``offset_seconds``: as that long ago."""
        names = {
            family.name: tuple(n for r in family.readings if r.signal == _MEM_USED for n in r.parts)
            if anchor
            else family.names
            for family in _FAMILIES
        }
        values = None if job_ids is None else _job_label_values(job_ids)
        offset = f" offset {_duration(offset_seconds)}" if offset_seconds else ""
        parts = []
        for labelling in _DCGM.job_labellings:
            # The exported labelling keeps the scrape's pod labels too: they tell which pod is the exporter.
            kept = (*labelling, *metrics.DCGM_SCRAPE_POD_LABELLING) if _is_exported(labelling) else labelling
            matchers = ((labelling[-1], values), *_scrape_pod_guard(labelling))
            selector = _name_selector(names[_DCGM.name], matchers)
            parts.append(f"group by ({','.join(kept)}) ({selector}{offset})")
        jobstats = ((metrics.JOBSTATS_JOB_LABEL, None if job_ids is None else _any_of(job_ids)),)
        selector = _name_selector(names[_JOBSTATS.name], jobstats)
        parts.append(f"group by ({metrics.JOBSTATS_JOB_LABEL}) ({selector}{offset})")
        return " or ".join(parts)

    # --- the steps of summarize_job ----------------------------------------------------------

    def _locate(
        self,
        job_id: str,
        start: datetime | None,
        end: datetime | None,
        tally: _Tally,
        placement: Mapping[str, Sequence[int]] | None = None,
    ) -> _Located:
        """Find the job's labelling, its series and its window."""
        hi = _unix(end) if end is not None else datetime.now(UTC).timestamp()
        lo = _unix(start) if start is not None else hi - self.lookback_seconds
        if lo >= hi:
            raise SourceQueryError(
                f"the window starts at {start} and ends at {end}; give a start before the end"
            )
        candidate, present = self._find_job(job_id, lo, hi, tally, placement)
        family, matchers = candidate.family, candidate.matchers
        chosen = family.choose(present)
        anchor = family.anchor(present, chosen)
        tally.notes.append(f"job {job_id} read from {family.name} series labelled {candidate.describe()}")
        missing = [s for s in SIGNALS if s not in chosen]
        if missing:
            tally.notes.append(f"no series for {', '.join(missing)}: they are NaN")

        search_lo, search_hi = lo, hi
        if start is None or end is None:
            search_lo, search_hi = self._coarse_window(job_id, candidate, anchor, lo, hi, tally)
        first, last = self._edges(
            family, anchor, matchers, search_lo, search_hi, tally, samples_follow=end is not None
        )
        left_out = _whole_gpus_of_instances(first.keys() | last.keys(), family.identity, family)
        tally.notes.extend(_left_out_notes(left_out.values(), family))
        first = {key: value for key, value in first.items() if key not in left_out}
        last = {key: value for key, value in last.items() if key not in left_out}
        if not first or not last:
            raise JobNotFound(self._not_found(job_id, [candidate], lo, hi, "has no samples"))
        window_start = lo if start is not None else min(first.values())
        window_end = hi if end is not None else max(last.values())
        if start is None or end is None:
            tally.notes.append(
                f"window taken from the data: {iso_utc(window_start)} to {iso_utc(window_end)} "
                f"(first and last sample)"
            )
        return _Located(
            candidate,
            chosen,
            anchor,
            first,
            last,
            window_start,
            window_end,
            family.preferred(present),
            frozenset(left_out),
        )

    def _find_job(
        self,
        job_id: str,
        lo: float,
        hi: float,
        tally: _Tally,
        placement: Mapping[str, Sequence[int]] | None = None,
    ) -> tuple[_Candidate, set[str]]:
        """The first labelling under which the job has series in ``[lo, hi]``, and their names; with a
        ``placement`` (the job's nodes and GPUs, from the scheduler), unlabelled series on them last."""
        tried = _candidates(job_id) + (_placement_candidates(placement) if placement else [])
        for candidate in tried:
            selector = _name_selector(candidate.family.names, candidate.matchers)
            names = self._label_values(
                [("match[]", selector), ("start", f"{lo:.3f}"), ("end", f"{hi:.3f}")],
                f"looking for job {job_id} as {candidate.describe()}",
                tally,
            )
            if names and not self._is_scrape_pod(candidate, lo, hi, tally):
                return candidate, set(names)
        raise JobNotFound(self._not_found(job_id, tried, lo, hi, "has no GPU series"))

    def _is_scrape_pod(self, candidate: _Candidate, lo: float, hi: float, tally: _Tally) -> bool:
        """Whether a candidate's plain pod labels name the scrape's own pod (the exporter's): the pod
        the scrape renamed an exporter's ``pod`` away from, ``exported_pod``, on other series."""
        exported_pod = metrics.DCGM_EXPORTED_JOB_LABELLING[-1]
        if (exported_pod, "") not in candidate.matchers:
            return False
        matchers = [*(m for m in candidate.matchers if m[0] != exported_pod), (exported_pod, None)]
        found = self._label_values(
            [
                ("match[]", _name_selector(candidate.family.names, matchers)),
                ("start", f"{lo:.3f}"),
                ("end", f"{hi:.3f}"),
            ],
            f"checking whether {candidate.describe()} is the exporter's own pod",
            tally,
        )
        if found:
            tally.count(
                notes=[f"{candidate.describe()} names the exporter's own pod, not a job: passed over"]
            )
        return bool(found)

    def _coarse_window(
        self, job_id: str, candidate: _Candidate, anchor: str, lo: float, hi: float, tally: _Tally
    ) -> tuple[float, float]:
        """Narrow ``[lo, hi]`` to the job's samples, to within the lookback delta, with two cheap queries.

        Counting before ``timestamp()`` makes each step one aggregate instead of
        one value per GPU; the step time it yields is at most one lookback delta
        after the first sample and before the last.
        """
        present = f"timestamp(count({_selector(anchor, candidate.matchers)}))"
        subquery = f"[{_duration(hi + _LOOKBACK_DELTA_SECONDS - lo)}:{_LOOKBACK_DELTA_SECONDS}s]"
        at = hi + _LOOKBACK_DELTA_SECONDS
        found = []
        for edge in ("min", "max"):
            result = self._query(f"{edge}_over_time({present}{subquery})", at, "finding the job's run", tally)
            value = _parse_value(result[0]["value"]) if result else math.nan
            if not math.isfinite(value):
                raise JobNotFound(self._not_found(job_id, [candidate], lo, hi, "has no samples"))
            found.append(value)
        return max(lo, found[0] - _LOOKBACK_DELTA_SECONDS), min(hi, found[1])

    def _edges(
        self,
        family: _Family,
        anchor: str,
        matchers: Sequence[tuple[str, str]],
        lo: float,
        hi: float,
        tally: _Tally,
        *,
        samples_follow: bool,
    ) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
        """Each GPU's first and last sample time in ``[lo, hi]`` (Unix seconds).

        ``timestamp()`` under a subquery costs much per step, so a 5-minute step
        (half the window, for a window shorter than 10 minutes) comes first: it
        finds each GPU's first sample to within 5 minutes, and its last exactly
        unless ``samples_follow`` ``hi`` (a sample stays visible for the
        lookback delta, but a later one hides it). A 1-second pass over those 5
        minutes then finds them to the second.
        """
        stamped = f"((timestamp({_selector(anchor, matchers)}) >= {lo:.3f}) <= {hi:.3f})"
        by = ",".join(family.identity)
        delta = _LOOKBACK_DELTA_SECONDS
        # Where samples follow the window, only steps inside it see the window's samples: a step of
        # at most half the window puts two there, so a window of two scrape intervals is found.
        coarse = _duration(min(delta, max(1.0, (hi - lo) / 2)))
        found: dict[str, dict[tuple[str, ...], float]] = {}
        for edge, which in (("min", "first"), ("max", "last")):
            found[edge] = _finite(
                self._vector(
                    f"{edge} by ({by}) ({edge}_over_time({stamped}[{_duration(hi + delta - lo)}:{coarse}]))",
                    hi + delta,
                    f"finding each GPU's {which} sample",
                    family,
                    tally,
                )
            )
            if not found[edge] or (edge == "max" and not samples_follow):
                continue
            earliest, latest = min(found[edge].values()), max(found[edge].values())
            if latest - earliest > _REFINE_SPREAD_SECONDS:
                tally.notes.append(
                    f"the GPUs' {which} samples lie more than an hour apart: "
                    f"{WINDOW_START if edge == 'min' else WINDOW_END} is exact only to 5 minutes"
                )
                continue
            if edge == "min":
                earliest -= delta  # the first sample lies up to 5 minutes before the coarse one
            else:
                latest += delta  # the last sample lies up to 5 minutes after the coarse one
            at = math.ceil(latest) + 1
            refined = self._vector(
                f"{edge} by ({by}) ({edge}_over_time({stamped}[{_duration(at - math.floor(earliest))}:1s]))",
                at,
                f"finding each GPU's {which} sample to the second",
                family,
                tally,
            )
            found[edge] |= _finite(refined)
        return found["min"], found["max"]

    def _preferred_statistic(
        self, readings: Sequence[_Signal], statistic: str, matchers: Sequence[_Matcher], width: float, by: str
    ) -> _Planned:
        """One query for ``statistic`` of a signal: each GPU's from the first of ``readings`` it has."""
        column = summary_column(readings[0].signal, statistic)
        names = " or ".join("+".join(r.names) for r in readings)
        purpose = f"reading {statistic} of {names}"
        if len(readings) == 1:
            query = self._statistic_query(readings[0], statistic, matchers, width, by)
            return _Planned(column, query, purpose, readings[0].scale)
        # Both sides are grouped by the GPU identity, so "or" adds a later reading's GPUs only where no
        # earlier one has the GPU; each side is scaled to base units first.
        query = " or ".join(
            f"({self._statistic_query(r, statistic, matchers, width, by)}) * {r.scale!r}" for r in readings
        )
        return _Planned(column, query, purpose)

    def _statistic_query(
        self, reading: _Signal, statistic: str, matchers: Sequence[_Matcher], width: float, by: str
    ) -> str:
        if reading.raw_gauge:
            series = f"{_selector(reading.parts[0], matchers)}[{_duration(width)}]"
            if statistic == "mean":
                # Sum over count stays exact where one GPU's series was split by a label change.
                return f"sum by ({by}) (sum_over_time({series})) / sum by ({by}) (count_over_time({series}))"
        else:
            per_step = _per_step(reading, matchers, self.step_seconds, by)
            series = f"({per_step})[{_duration(width)}:{_duration(self.step_seconds)}]"
            if statistic == "mean":
                return f"avg by ({by}) (avg_over_time({series}))"
        if statistic in ("min", "max"):
            return f"{statistic} by ({by}) ({statistic}_over_time({series}))"
        return f"avg by ({by}) (quantile_over_time({_QUANTILES[statistic]}, {series}))"

    def _idle_query(self, reading: _Signal, matchers: Sequence[_Matcher], width: float, by: str) -> str:
        threshold = IDLE_SM_ACTIVE_RATIO / reading.scale
        per_step = f"({_per_step(reading, matchers, self.step_seconds, by)}) < bool {threshold!r}"
        return (
            f"avg by ({by}) (avg_over_time(({per_step})[{_duration(width)}:{_duration(self.step_seconds)}]))"
        )

    # --- HTTP ---------------------------------------------------------------------------------

    def _run(
        self, plan: Sequence[_Planned], at: float, family: _Family, tally: _Tally
    ) -> dict[str, dict[tuple[str, ...], float]]:
        """Run the planned queries, ``max_concurrent_queries`` at a time; columns keyed by GPU identity."""

        def one(planned: _Planned) -> dict[tuple[str, ...], float]:
            values = self._vector(planned.query, at, planned.purpose, family, tally)
            return {key: value * planned.scale for key, value in values.items()}

        with ThreadPoolExecutor(max_workers=max(1, self.max_concurrent_queries)) as pool:
            answers = list(pool.map(one, plan))
        return {planned.column: answer for planned, answer in zip(plan, answers, strict=True)}

    def _vector(
        self, query: str, at: float, purpose: str, family: _Family, tally: _Tally
    ) -> dict[tuple[str, ...], float]:
        """An instant query's answer keyed by the GPU identity labels."""
        return {
            tuple(item["metric"].get(label, "") for label in family.identity): _parse_value(item["value"])
            for item in self._query(query, at, purpose, tally)
        }

    def _query(
        self, query: str, at: float, purpose: str, tally: _Tally, result_type: str = "vector"
    ) -> list[dict[str, Any]]:
        data = self._call("post", "/api/v1/query", [("query", query), ("time", f"{at:.3f}")], purpose, tally)
        if not isinstance(data, dict) or data.get("resultType") != result_type:
            raise SourceQueryError(
                f"Prometheus at {self.url} answered {purpose} with something other than a {result_type}"
            )
        result = data.get("result")
        problem = _malformed(result, result_type)
        if problem:
            raise SourceQueryError(
                f"Prometheus at {self.url} answered {purpose} with a malformed {result_type} ({problem}); "
                "check that the URL points at a Prometheus-compatible server"
            )
        assert isinstance(result, list)
        tally.count(series=len(result))
        return result

    def _label_values(self, params: list[tuple[str, str]], purpose: str, tally: _Tally) -> list[str]:
        """The metric names a ``/api/v1/label/__name__/values`` request finds."""
        data = self._call("get", "/api/v1/label/__name__/values", params, purpose, tally)
        if data is None:
            return []
        if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
            raise SourceQueryError(
                f"Prometheus at {self.url} answered {purpose} with something other than a list of names"
            )
        return data

    def _call(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]],
        purpose: str,
        tally: _Tally,
    ) -> Any:
        """The ``data`` of a Prometheus API answer; every network and server failure becomes ours."""
        assert self.session is not None
        tally.count(queries=1)
        where = f"Prometheus at {self.url}"
        try:
            response = self.session.request(
                method,
                self.url + path,
                params=params if method == "get" else None,
                data=params if method == "post" else None,
                auth=self._auth,
                headers=self._headers,
                timeout=self.timeout_seconds,
            )
        except requests.Timeout:
            raise SourceQueryError(
                f"{where} did not answer {purpose} within the timeout of {self.timeout_seconds:g} s; "
                "raise timeout_seconds or ask for a shorter window"
            ) from None
        except requests.ConnectionError as exc:
            raise SourceUnavailable(
                f"cannot reach {where} ({_connection_reason(exc)}); check the URL and that the server is up"
            ) from None
        except requests.RequestException as exc:
            raise SourceQueryError(
                f"request to {where} failed while {purpose}: {type(exc).__name__}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise SourceQueryError(
                f"{where} answered HTTP {response.status_code} with no Prometheus JSON while {purpose}; "
                "check that the URL points at the Prometheus server"
            )
        if response.status_code >= 400 or body.get("status") != "success":
            detail = one_line(f"{body.get('errorType', 'error')}: {body.get('error', 'no error text')}")
            hint = (
                "; check the credentials given for it (basic-auth user and password, or bearer token)"
                if response.status_code in (401, 403)
                else ""
            )
            raise SourceQueryError(
                f"{where} answered HTTP {response.status_code} while {purpose}: {detail}{hint}"
            )
        warnings = body.get("warnings")
        warnings = warnings if isinstance(warnings, list) else [] if warnings is None else [warnings]
        tally.count(notes=[f"Prometheus warned: {one_line(str(w))}" for w in warnings])
        return body.get("data")

    def _not_found(self, job_id: str, tried: Sequence[_Candidate], lo: float, hi: float, what: str) -> str:
        labels = "; ".join(f"{c.family.name} {c.describe()}" for c in tried)
        return (
            f"job {job_id!r} {what} in Prometheus at {self.url} between {iso_utc(lo)} and {iso_utc(hi)} "
            f"(labels tried: {labels}); check the job id and the time window"
        )


# --- helpers ----------------------------------------------------------------------------------


def _finite(values: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    """``values`` without NaN and infinities: a sample time that is not a number is no sample."""
    return {key: value for key, value in values.items() if math.isfinite(value)}


def _malformed(result: object, result_type: str) -> str:
    """What is wrong with a query's ``result`` of ``result_type`` (vector or matrix); empty when nothing.

    Sample values are parsed in place (floats from here on), so a value that is no number is caught
    here, once, and not as a ``ValueError`` deep in a statistic.
    """
    if not isinstance(result, list):
        return "no result list"
    if result_type == "vector" and _parsed_vector(result):
        return ""
    key = "value" if result_type == "vector" else "values"
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
            return "a series without its labels"
        if not all(isinstance(v, str) for v in item["metric"].values()):
            return "a label value that is not a string"
        samples = item.get(key)
        if result_type == "vector":
            samples = [samples]
        if not isinstance(samples, list):
            return f"a series without {key}"
        for index, sample in enumerate(samples):
            if not isinstance(sample, list | tuple) or len(sample) != 2:
                return f"a series without {key}" if sample is None else "a sample that is not [time, value]"
            try:
                parsed = (float(sample[0]), float(sample[1]))
            except (TypeError, ValueError):
                return f"a sample {one_line(json.dumps(sample), 60)} that is not a number"
            samples[index] = parsed
        if result_type == "vector":
            item[key] = samples[0]
    return ""


def _parsed_vector(result: list[Any]) -> bool:
    """Parse the sample values of an instant vector in place, the common way fast; False at the first item
    that is not a well-formed series (the items before it parsed), for :func:`_malformed` to tell why."""
    for item in result:
        if type(item) is not dict:
            return False
        metric, sample = item.get("metric"), item.get("value")
        if type(metric) is not dict or type(sample) is not list or len(sample) != 2:
            return False
        if not all(type(value) is str for value in metric.values()):
            return False
        try:
            item["value"] = (float(sample[0]), float(sample[1]))
        except (TypeError, ValueError):
            return False
    return True


def _name_regex(names: Iterable[str]) -> str:
    # Metric names hold only [a-zA-Z0-9_:], so the alternation needs no escaping.
    return _quote("|".join(names))


def _connection_reason(exc: requests.ConnectionError) -> str:
    text = str(exc)
    if "NameResolution" in text or "Name or service not known" in text:
        return "host name not found"
    if "refused" in text.lower():
        return "connection refused"
    return type(exc).__name__


def _rate_key(reading: _Signal) -> str:
    """How :meth:`PrometheusSource.job_samples` names the answer holding a counter's rate."""
    return f"rate:{reading.parts[0]}"


def _stand_in_notes(preferred: Mapping[str, Sequence[_Signal]]) -> list[str]:
    """A note where dcgm-exporter's graphics-engine activity stands in for GPU utilization."""
    gr_engine = metrics.DCGM_GR_ENGINE_ACTIVE
    readings = preferred.get(gr_engine.signal, ())
    if not any(reading.names == (gr_engine.name,) for reading in readings):
        return []
    gpu_util = metrics.dcgm_metric_for(gr_engine.signal)
    where = "on every GPU" if len(readings) == 1 else f"on the GPUs without {gpu_util}"
    return [
        f"{gr_engine.signal} read from {gr_engine.name} {where} "
        f"(dcgm-exporter publishes no {gpu_util} for MIG instances)"
    ]


def _whole_gpus_of_instances(
    keys: Iterable[tuple[str, ...]],
    names: Sequence[str],
    family: _Family,
    job_of: Callable[[Mapping[str, str]], str | None] | None = None,
) -> dict[tuple[str, ...], dict[str, str]]:
    """The keys (values of the labels ``names``) of whole-GPU series whose GPU the same job (``job_of``)
    also has MIG instances of, with their labels. Such a series holds the whole GPU's readings (its
    utilization, its memory), shared by every instance and so by other jobs: a job holding an instance
    reads that instance only."""
    labelled = {key: dict(zip(names, key, strict=True)) for key in keys}

    def device(labels: Mapping[str, str]) -> tuple[tuple[str | None, str], str]:
        host, gpu = _device(labels, family)
        return (job_of(labels) if job_of is not None else None, host), gpu

    whole = whole_gpus_split_into_instances(device(labels) for labels in labelled.values())
    return {key: labels for key, labels in labelled.items() if device(labels) in whole}


def _left_out_notes(
    labelsets: Iterable[Mapping[str, str]],
    family: _Family,
    job_of: Callable[[Mapping[str, str]], str | None] | None = None,
) -> list[str]:
    notes = []
    for labels in labelsets:
        where = _identity(labels, family, "")
        job = job_of(labels) if job_of is not None else None
        notes.append(
            f"{f'job {job}: ' if job else ''}GPU {where[GPU]} on {where[HOST]} is split into MIG instances: "
            "each read as a GPU of its own, the whole GPU's series (shared by its instances) left out"
        )
    return sorted(set(notes))


def _label(labels: Mapping[str, str], names: Sequence[str]) -> str:
    return next((labels[n] for n in names if labels.get(n)), "")


def _device(labels: Mapping[str, str], family: _Family) -> tuple[str, str]:
    """The host and GPU (``"0/1"`` for a MIG instance) one series' labels name; "" where none."""
    host = _label(labels, family.host_labels)
    host_name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        host = host_name  # jobstats' instance label is host:port
    gpu = _label(labels, family.gpu_labels)
    if gpu and labels.get(family.mig_label):
        gpu = mig_gpu(gpu, labels[family.mig_label])
    return host, gpu


def _identity(labels: Mapping[str, str], family: _Family, job_id: str) -> dict[str, object]:
    """The label columns of one GPU from its series' labels."""
    host, gpu = _device(labels, family)
    return {
        HOST: host or None,
        GPU: gpu or None,
        JOB_ID: job_id,
        GPU_MODEL: labels.get(family.model_label) or None,
    }


def _frame(
    columns: Mapping[str, Mapping[tuple[str, ...], float]], family: _Family, job_id: str
) -> pd.DataFrame:
    """The GPU-summary frame from per-column answers keyed by identity labels."""
    keys = sorted({key for values in columns.values() for key in values})
    rows = []
    for key in keys:
        row: dict[str, object] = _identity(dict(zip(family.identity, key, strict=True)), family, job_id)
        for column, values in columns.items():
            row[column] = values.get(key, math.nan)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[HOST, GPU, JOB_ID, GPU_MODEL, *columns])
    for column in (WINDOW_START, WINDOW_END):
        milliseconds = np.round(frame[column].to_numpy(dtype="float64") * 1000)
        frame[column] = pd.to_datetime(milliseconds, unit="ms", utc=True)
    return conform_summary(frame)


def _job_label_values(job_ids: Sequence[str]) -> _Regex:
    """The values a job labelling's last label may take for ``job_ids``: each id, and a Kubernetes id's
    pod name alone (a superset: the ids read back from the answer tell)."""
    return _any_of(sorted({*job_ids, *(job_id.rpartition("/")[2] for job_id in job_ids)}))


def _job_ids(labelsets: Sequence[Mapping[str, str]]) -> list[str | None]:
    """The job id each labelset of :meth:`PrometheusSource._jobs_query` names; None for the exporter's pod."""
    scrape_pods = _scrape_pods(labelsets)
    found: list[str | None] = []
    for labels in labelsets:
        # Each part of the query keeps only its own labelling's labels.
        if labels.get(metrics.JOBSTATS_JOB_LABEL):
            found.append(_JOBSTATS.job_id(labels))
        elif _names_scrape_pod(labels, _DCGM, scrape_pods):
            found.append(None)
        else:
            found.append(_DCGM.job_id(labels))
    return found


def _is_exported(labelling: Sequence[str]) -> bool:
    return tuple(labelling) == metrics.DCGM_EXPORTED_JOB_LABELLING


def _scrape_pods(labelsets: Iterable[Mapping[str, str]]) -> set[tuple[str, ...]]:
    """The scrape's own pods: the plain pod labels of series that also carry ``exported_pod``."""
    exported_pod = metrics.DCGM_EXPORTED_JOB_LABELLING[-1]
    return {
        tuple(labels.get(label, "") for label in metrics.DCGM_SCRAPE_POD_LABELLING)
        for labels in labelsets
        if labels.get(exported_pod)
    }


def _names_scrape_pod(labels: Mapping[str, str], family: _Family, scrape_pods: set[tuple[str, ...]]) -> bool:
    """Whether the job these labels name would come from the plain pod labels, and those name a scrape's
    own pod (the exporter's, which kube-prometheus adds to every series, a GPU's without a pod too)."""
    first = next((labelling for labelling in family.job_labellings if labels.get(labelling[-1])), None)
    if first is None or tuple(first) != metrics.DCGM_SCRAPE_POD_LABELLING:
        return False
    return tuple(labels.get(label, "") for label in first) in scrape_pods


def _jobs_frame(
    columns: Mapping[str, Mapping[tuple[str, ...], float]], family: _Family, tally: _Tally
) -> pd.DataFrame:
    """GPU-summary rows of many jobs from answers keyed by (job labels, identity) values."""
    names = (*family.job_labels, *family.identity)
    labelled = {key: dict(zip(names, key, strict=True)) for key in sorted(set().union(*columns.values()))}
    scrape_pods = _scrape_pods(labelled.values())
    named = {
        key: labels
        for key, labels in labelled.items()
        if family.job_id(labels) is not None and not _names_scrape_pod(labels, family, scrape_pods)
    }
    left_out = _whole_gpus_of_instances(named, names, family, family.job_id)
    tally.count(notes=_left_out_notes(left_out.values(), family, family.job_id))
    rows: dict[tuple[str, ...], dict[str, object]] = {}
    for key, labels in named.items():
        job_id = family.job_id(labels)
        if job_id is not None and key not in left_out:
            rows[key] = _identity(labels, family, job_id)
    # Built column by column: a frame of many GPUs and some 50 statistics, without a dict per row.
    frame = pd.DataFrame(list(rows.values()), columns=[HOST, GPU, JOB_ID, GPU_MODEL])
    statistics = {
        column: np.fromiter((values.get(key, math.nan) for key in rows), dtype="float64", count=len(rows))
        for column, values in columns.items()
    }
    frame = pd.concat([frame, pd.DataFrame(statistics, index=frame.index)], axis=1)
    for column in (WINDOW_START, WINDOW_END):
        if column in frame.columns:
            milliseconds = np.round(frame[column].to_numpy(dtype="float64") * 1000)
            frame[column] = pd.to_datetime(milliseconds, unit="ms", utc=True)
    return frame
