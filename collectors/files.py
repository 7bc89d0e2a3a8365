"""Capture files: GPU telemetry recorded to disk by the tools clusters already run.

:func:`read_capture` detects the format by content, not by name (a gzip file is
decompressed first, whatever it is called) and reads:

* ``nvidia-smi --query-gpu=... --format=csv`` logs, any fields in any order,
  with or without ``nounits``; a file written ``noheader`` is read only with
  its ``--query-gpu`` list given (``fields``: its columns cannot be named
  otherwise); ``utilization.gpu`` with a value in some record is required.
  The GPU is named by ``index``, ``uuid`` or ``pci.bus_id``, else by its row
  order within a tick. nvidia-smi prints the
  node's local time without a zone: **its timestamps are read as UTC**;
  without a ``timestamp`` column the ticks (a new one where a GPU repeats) are
  placed like dmon samples, 1 s apart by default.
* ``nvidia-smi dmon``, ``pmon``, ``-q`` and ``-q -x`` output
  (:mod:`collectors.nvsmi_text`); a pmon file selects a job ``pid:<pid>`` by
  the GPUs that process ran on.
* ``dcgmi dmon -e 1001,1002,...`` text output (fields by name or id; the
  prompt, command and escape sequences of a terminal around it are skipped). dmon prints no time: its samples
  are spaced ``interval_seconds`` apart (default 1 s, dmon's default ``-d``).
* Prometheus text exposition scraped from dcgm-exporter (or the retired
  gpu-monitoring-tools exporter's ``dcgm_*`` series) or the jobstats
  exporter, one scrape or several concatenated. Without sample timestamps the
  scrapes are spaced ``interval_seconds`` apart (default 30 s, dcgm-exporter's
  collection interval). A MIG instance is a GPU of its own (``gpu/instance``);
  where ``DCGM_FI_DEV_GPU_UTIL`` is absent (MIG) ``DCGM_FI_PROF_GR_ENGINE_ACTIVE``
  gives the GPU's activity; DCGM's blank values are missing, lines ``...``
  (where an author cut the output) skipped, each with a note. Series copied
  without values, or with labels cut short, are refused.
* A Prometheus HTTP API answer (``/api/v1/query`` or ``query_range``,
  ``vector`` or ``matrix``) saved as JSON: the same dcgm-exporter and jobstats
  series, read with their own timestamps. An answer whose series lost their
  names (a function or aggregation such as ``avg_over_time`` drops
  ``__name__``), or lack per-GPU labels (``sum(...)``), is refused: which
  metric, or which GPU, it holds would be a guess.
* zest's own Parquet capture, written by :func:`write_capture`.

Where a file carries no time, the samples start at ``start_time`` or, by
default, end at the file's modification time: the moment its last sample was
written. Every such assumption is returned in :attr:`Capture.notes`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import math
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from collectors import metrics, nvsmi_text
from collectors.errors import CaptureWriteError, JobNotFound, MalformedCapture, SourceUnavailable
from collectors.schema import (
    COLUMNS,
    GPU,
    GPU_MODEL,
    HOST,
    JOB_ID,
    LABELS,
    TIMESTAMP,
    SchemaError,
    canonical_signal,
    conform,
    constant_label,
    fill_label,
    in_epoch_span,
    in_time_span,
    mig_gpu,
    mig_parent,
    screen,
    whole_gpus_split_into_instances,
)
from collectors.textcapture import Clock, Parsed, Row
from collectors.util import one_line

#: Version of the Parquet capture layout that :func:`write_capture` writes and :func:`read_capture` reads.
FORMAT_VERSION = 1
#: Parquet file-metadata key holding the capture's JSON header.
METADATA_KEY = b"zest.capture"
ACCEPTED_FORMATS = (
    "nvidia-smi --query-gpu CSV (with its header line, or its fields given), nvidia-smi dmon, pmon, -q or "
    "-q -x output, dcgmi dmon text, Prometheus text from "
    "dcgm-exporter or the jobstats exporter, a Prometheus HTTP API JSON answer (vector or matrix) "
    "of their series, zest Parquet; each may be gzip-compressed"
)
DMON_INTERVAL_SECONDS = 1.0  # dcgmi dmon's default -d 1000 (ms)
SCRAPE_INTERVAL_SECONDS = 30.0  # dcgm-exporter's default collection interval

NVIDIA_SMI = "nvidia-smi csv"
DCGMI_DMON = "dcgmi dmon"
PROMETHEUS = "prometheus text"
PROMETHEUS_API = "prometheus api json"
ZEST_PARQUET = "zest parquet"

_JOBS_NAMED = 5  # job ids a JobNotFound message lists
_PID_JOB = "pid:"  # a job named by one of its processes, where the file lists the processes on each GPU


_MEM_TOTAL_BYTES = canonical_signal("mem_total_bytes")
_NVLINK_BYTES_PER_SECOND = canonical_signal("nvlink_bytes_per_second")


@dataclass(frozen=True)
class Capture:
    """Telemetry read from a capture file, with the assumptions made reading it."""

    frame: pd.DataFrame  # the canonical telemetry frame (collectors.schema.COLUMNS)
    notes: list[str] = field(default_factory=list)  # one line each, e.g. "timestamps assumed UTC"
    source_format: str = ""  # which format: NVIDIA_SMI, DCGMI_DMON, PROMETHEUS, PROMETHEUS_API, ZEST_PARQUET


def read_capture(
    path: Path,
    job_id: str | None = None,
    *,
    host: str | None = None,
    interval_seconds: float | None = None,
    start_time: datetime | None = None,
    fields: Sequence[str] | None = None,
) -> Capture:
    """Read a capture file into the canonical telemetry frame.

    ``job_id``: a file without job labels belongs wholly to this job (its rows
    get this id); a file with job labels is filtered to it. ``host`` names the
    node for rows the file gives none (nvidia-smi, dmon); otherwise the host
    stays missing. ``interval_seconds`` and ``start_time`` (UTC where naive)
    place the samples of files without timestamps (dmon, Prometheus scrapes
    without sample timestamps); by default the last sample sits at the
    file's modification time. ``fields`` names the columns of a nvidia-smi
    CSV written without its header (``--format=csv,noheader``): the
    ``--query-gpu`` list, in its order.

    Raises :class:`SourceUnavailable` if the file cannot be opened,
    :class:`MalformedCapture` (``path:line: what broke``) if it cannot be
    parsed or its format is unknown, :class:`JobNotFound` if its job labels
    do not include ``job_id``.
    """
    if interval_seconds is not None and not interval_seconds > 0:
        raise ValueError(f"interval_seconds must be > 0, got {interval_seconds}")
    try:
        with path.open("rb") as head:
            is_parquet = head.read(4) == b"PAR1"
        data = b"" if is_parquet else path.read_bytes()
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise SourceUnavailable(
            f"{path}: cannot read capture file ({exc.strerror}): check the path"
        ) from None
    try:
        modified = datetime.fromtimestamp(mtime, tz=UTC)
    except (OverflowError, OSError, ValueError):  # a modification time past year 9999
        modified = datetime.now(UTC)
    if is_parquet:  # read by pyarrow from the file, not through a copy in memory
        frame, notes = _read_parquet(path, path)
        return _finish(path, frame, job_id, host, Parsed([], notes, ZEST_PARQUET))
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise MalformedCapture(f"{path}:1: corrupt or truncated gzip data ({exc})") from None
    if data[:4] == b"PAR1":
        frame, notes = _read_parquet(path, data)
        return _finish(path, frame, job_id, host, Parsed([], notes, ZEST_PARQUET))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MalformedCapture(
            f"{path}:{line}: not UTF-8 text; accepted formats: {ACCEPTED_FORMATS}"
        ) from None
    lines = text.splitlines()
    given = None if fields is None else _given_header(fields)
    source_format = _detect(path, lines, headerless=given is not None)
    if given is not None and source_format != NVIDIA_SMI:
        raise MalformedCapture(
            f"{path}:1: --fields names the columns of a nvidia-smi CSV without its header, "
            f"but this file is {source_format}: drop --fields"
        )
    clock = Clock(path, interval_seconds, start_time, modified)
    if source_format == NVIDIA_SMI:
        parsed = _parse_nvidia_smi(path, lines, clock, given)
    elif source_format == DCGMI_DMON:
        parsed = _parse_dmon(path, lines, clock)
    elif source_format in nvsmi_text.FORMATS:
        parsed = nvsmi_text.parse(path, lines, clock, source_format)
    elif source_format == PROMETHEUS_API:
        parsed = _parse_prometheus_api(path, text)
    else:
        parsed = _parse_prometheus(path, lines, clock)
    frame = conform(pd.DataFrame.from_records(parsed.rows, columns=list(COLUMNS)), sort=False)
    frame, screened = screen(frame, lambda row: f"{path}:{parsed.lines[row]}")
    parsed.notes.extend(screened)
    return _finish(path, conform(frame), job_id, host, parsed)


def write_capture(frame: pd.DataFrame, path: Path, *, notes: Sequence[str] = ()) -> None:
    """Write ``frame`` (put in the canonical schema first) as a zest Parquet capture, zstd-compressed.

    ``notes`` are kept in the file and returned again by :func:`read_capture`.
    The file appears whole or not at all: it is written beside ``path`` and
    renamed over it, so a failed write leaves a file already there as it was.
    Raises :class:`collectors.schema.SchemaError` if ``frame`` lacks a
    timestamp column, :class:`CaptureWriteError` if the file cannot be written.
    """
    table = pa.Table.from_pandas(conform(frame), preserve_index=False)
    header = {"format_version": FORMAT_VERSION, "columns": list(COLUMNS), "notes": list(notes)}
    schema_metadata = dict(table.schema.metadata or {})
    schema_metadata[METADATA_KEY] = json.dumps(header).encode()
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        pq.write_table(table.replace_schema_metadata(schema_metadata), partial, compression="zstd")
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # no folder, or not one: there is no partial file to remove
            partial.unlink(missing_ok=True)
        # pyarrow's message names the partial file; the reason of the errno names what the user can fix
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CaptureWriteError(
            f"{path}: cannot write capture ({reason}): check that its folder exists and is writable, "
            "and the disk has space"
        ) from None


# --- shared steps --------------------------------------------------------------


def _finish(path: Path, frame: pd.DataFrame, job_id: str | None, host: str | None, parsed: Parsed) -> Capture:
    notes = list(parsed.notes)
    if host is not None and frame[HOST].isna().any():
        frame[HOST] = fill_label(frame[HOST], host)
        notes.append(f"host {host} given by the caller for samples the file names no host for")
    elif frame[HOST].isna().all():
        notes.append("the file names no host: host left unset")
    if job_id is not None and job_id.startswith(_PID_JOB) and parsed.pids:
        return _by_process(path, frame, job_id, notes, parsed)
    jobs = frame[JOB_ID]
    if jobs.isna().all():
        if job_id is not None:
            frame[JOB_ID] = constant_label(job_id, frame.index)
            notes.append(f"the file has no job labels: all of it attributed to job {job_id}")
        return Capture(frame, notes, parsed.source_format)
    if job_id is None:
        return Capture(frame, notes, parsed.source_format)
    selected = jobs.eq(job_id).fillna(False).to_numpy(dtype=bool)
    if not selected.any():
        held = sorted(jobs.dropna().unique())
        named = ", ".join(held[:_JOBS_NAMED]) + (
            f" and {len(held) - _JOBS_NAMED} more" if len(held) > _JOBS_NAMED else ""
        )
        raise JobNotFound(f"{path}: no telemetry for job {job_id}; the file holds job(s) {named}: pass one")
    # A capture of one job is kept as it is, not copied row by row.
    mine = frame if selected.all() else frame[selected].reset_index(drop=True)
    chosen, left_out = _without_gpus_of_its_instances(mine)
    if left_out:
        notes.append(
            f"job {job_id} holds MIG instances of GPU(s) {', '.join(left_out)}: each instance read as a GPU "
            "of its own, the whole GPU's series (shared by its instances) left out"
        )
    return Capture(chosen, notes, parsed.source_format)


def _without_gpus_of_its_instances(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` (one job's rows) without the whole-GPU rows of GPUs the job holds MIG instances of."""
    if not any(mig_parent(gpu) for gpu in frame[GPU].cat.categories):  # no instance: nothing to drop
        return frame, []
    devices = frame[[HOST, GPU]].drop_duplicates().dropna(subset=[GPU])
    whole = whole_gpus_split_into_instances(
        ("" if pd.isna(host) else host, gpu) for host, gpu in devices.itertuples(index=False)
    )
    if not whole:
        return frame, []
    hosts = frame[HOST].astype("string").fillna("")
    dropped = pd.Series([pair in whole for pair in zip(hosts, frame[GPU], strict=True)], index=frame.index)
    return frame[~dropped].reset_index(drop=True), sorted({gpu for _, gpu in whole})


def _by_process(path: Path, frame: pd.DataFrame, job_id: str, notes: list[str], parsed: Parsed) -> Capture:
    """The rows of the GPUs where the file saw process ``pid:<pid>`` (nvidia-smi pmon)."""
    pid = job_id.removeprefix(_PID_JOB)
    gpus = sorted(gpu for gpu, pids in parsed.pids.items() if pid.isdigit() and int(pid) in pids)
    if not gpus:
        seen = sorted({p for pids in parsed.pids.values() for p in pids})
        named = ", ".join(map(str, seen[:_JOBS_NAMED])) + (
            f" and {len(seen) - _JOBS_NAMED} more" if len(seen) > _JOBS_NAMED else ""
        )
        raise JobNotFound(f"{path}: no process {pid} on any GPU of the file; it lists process(es) {named}")
    selected = frame[frame[GPU].isin(gpus)].reset_index(drop=True)
    selected[JOB_ID] = constant_label(job_id, selected.index)
    notes.append(
        f"job {job_id}: GPU(s) {', '.join(gpus)}, where the file lists process {pid} (its children, "
        "which the file does not link to it, are not followed)"
    )
    return Capture(selected, notes, parsed.source_format)


def _detect(path: Path, lines: Sequence[str], *, headerless: bool = False) -> str:
    """The format of ``lines``; ``headerless``: the columns of a nvidia-smi CSV without header are given."""
    # dcgmi dmon copied from a terminal may follow a prompt, the command line or escape sequences.
    head = (_TERMINAL_CONTROL.sub("", line).lstrip() for line in lines[:_DMON_HEADER_WITHIN])
    if any(line.startswith(("#Entity", "# Entity")) for line in head):
        return DCGMI_DMON
    found = nvsmi_text.detect(path, lines)
    if found is not None:
        return found
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith(("#Entity", "# Entity")):
            return DCGMI_DMON
        if stripped.startswith("{") and _is_prometheus_api_answer(path, "\n".join(lines)):
            return PROMETHEUS_API
        if stripped.startswith(("# HELP ", "# TYPE ")) or _PROMETHEUS_SAMPLE.fullmatch(stripped):
            return PROMETHEUS
        if _PROMETHEUS_LISTED_SERIES.fullmatch(stripped):
            return PROMETHEUS
        if stripped.startswith("#"):
            continue
        cells = _csv_cells(path, number, stripped)
        if _nvidia_smi_header(cells) is not None or (headerless and len(cells) > 1):
            return NVIDIA_SMI
        if _looks_like_nvidia_smi_record(cells):
            raise MalformedCapture(
                f"{path}:{number}: nvidia-smi CSV without its header line, so its columns cannot be "
                f"told apart: give the --query-gpu list it was recorded with as --fields (e.g. --fields "
                f"{_FIELDS_EXAMPLE}), or record with --format=csv"
            )
        raise MalformedCapture(
            f"{path}:{number}: unknown capture format; accepted formats: {ACCEPTED_FORMATS}"
        )
    raise MalformedCapture(f"{path}:1: the file is empty; accepted formats: {ACCEPTED_FORMATS}")


def _dcgm_signals(raw: Mapping[str, float]) -> dict[str, float]:
    """Canonical signals from DCGM field values keyed by their dcgm-exporter names."""
    out = {m.signal: raw[m.name] * m.scale for m in metrics.DCGM_METRICS if m.name in raw}
    gr_engine = metrics.DCGM_GR_ENGINE_ACTIVE
    if gr_engine.signal not in out and gr_engine.name in raw:
        out[gr_engine.signal] = raw[gr_engine.name] * gr_engine.scale
    total_mib = raw.get(metrics.DCGM_FB_TOTAL, math.nan)
    if math.isnan(total_mib) and metrics.DCGM_FB_USED in raw and metrics.DCGM_FB_FREE in raw:
        # Reserved memory is absent from older exporters and default dmon field lists.
        reserved_mib = raw.get(metrics.DCGM_FB_RESERVED, 0.0)
        total_mib = raw[metrics.DCGM_FB_USED] + raw[metrics.DCGM_FB_FREE] + reserved_mib
    if not math.isnan(total_mib):
        out[_MEM_TOTAL_BYTES] = total_mib * metrics.MIB
    if all(name in raw for name in metrics.DCGM_NVLINK_BYTES):
        out[_NVLINK_BYTES_PER_SECOND] = sum(raw[name] for name in metrics.DCGM_NVLINK_BYTES)
    elif metrics.DCGM_NVLINK_TOTAL in raw:  # the default counters' field 449, a throughput despite its type
        out[_NVLINK_BYTES_PER_SECOND] = (
            raw[metrics.DCGM_NVLINK_TOTAL] * metrics.DCGM_NVLINK_TOTAL_METRIC.scale
        )
    return out


def _jobstats_signals(raw: Mapping[str, float]) -> dict[str, float]:
    return {m.signal: raw[m.name] * m.scale for m in metrics.JOBSTATS_METRICS if m.name in raw}


# --- nvidia-smi --query-gpu --format=csv ---------------------------------------

_NVIDIA_SMI_HEADER_CELL = re.compile(r"([a-z][A-Za-z0-9_.]*)(?: \[([^\]]+)\])?")
_NVIDIA_SMI_TIMESTAMP_START = re.compile(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}")
# Cells only nvidia-smi writes: a null in brackets, a value with its unit, a GPU UUID, a PCI bus id.
_NVIDIA_SMI_RECORD_CELL = re.compile(
    r"\[[^\]]+\]|-?\d+(?:\.\d+)? (?:%|MiB|W|MHz)|GPU-[0-9a-fA-F-]{36}"
    r"|[0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d"
)
_NVIDIA_SMI_BY_NAME = {f.name: f for f in metrics.NVIDIA_SMI_METRICS}
_FIELDS_EXAMPLE = f"index,{metrics.NVIDIA_SMI_UTILIZATION},memory.used,memory.total"
_NVIDIA_SMI_KNOWN = {
    metrics.NVIDIA_SMI_TIMESTAMP,
    metrics.NVIDIA_SMI_MODEL,
    *metrics.NVIDIA_SMI_GPU_FIELDS,
    *_NVIDIA_SMI_BY_NAME,
}
_NVIDIA_SMI_TICK_GAP = timedelta(seconds=0.5)  # rows of one tick are ms apart; nvidia-smi -l loops >= 1 s
_NVIDIA_SMI_LOOP_SECONDS = 1.0  # spacing of the ticks of a log without timestamps, unless told

Header = list[tuple[str, str | None]]


def _csv_cells(path: Path, number: int, line: str) -> list[str]:
    try:
        return next(csv.reader([line], skipinitialspace=True))
    except csv.Error as exc:  # a field over csv's size limit (128 KiB), a NUL byte
        raise MalformedCapture(f"{path}:{number}: not a CSV record ({exc})") from None


def _looks_like_nvidia_smi_record(cells: list[str]) -> bool:
    """True if ``cells`` are a header-less nvidia-smi record (a timestamp first, or cells only it writes)."""
    if len(cells) < 2:
        return False
    if _NVIDIA_SMI_TIMESTAMP_START.match(cells[0].strip()):
        return True
    return any(_NVIDIA_SMI_RECORD_CELL.fullmatch(cell.strip()) for cell in cells)


def _nvidia_smi_header(cells: list[str]) -> Header | None:
    """``[(property, unit or None), ...]`` if ``cells`` are a nvidia-smi CSV header.

    A header is a line of property names, at least one of them one zest knows.
    """
    matches = [_NVIDIA_SMI_HEADER_CELL.fullmatch(cell.strip()) for cell in cells]
    if not all(matches):
        return None
    header = [
        (metrics.NVIDIA_SMI_ALIASES.get(m.group(1), m.group(1)), m.group(2)) for m in matches if m is not None
    ]
    if not any(name in _NVIDIA_SMI_KNOWN for name, _ in header):
        return None
    return header


def _check_nvidia_smi_header(path: Path, number: int, header: Header) -> None:
    names = [name for name, _ in header]
    if metrics.NVIDIA_SMI_UTILIZATION not in names:
        held = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise MalformedCapture(
            f"{path}:{number}: nvidia-smi CSV holding {held}: no utilization or activity signal; "
            f"add {metrics.NVIDIA_SMI_UTILIZATION} to --query-gpu"
        )
    for name, unit in header:
        known = _NVIDIA_SMI_BY_NAME.get(name)
        if known is not None and unit is not None and unit != known.unit:
            raise MalformedCapture(f"{path}:{number}: {name} is in [{unit}], expected [{known.unit}]")


def _nvidia_smi_time(path: Path, number: int, cell: str) -> datetime | None:
    """The time of a record; None if it lies outside the span samples can have (the screen drops it)."""
    for layout in metrics.NVIDIA_SMI_TIMESTAMP_FORMATS:
        try:
            when = datetime.strptime(cell, layout).replace(tzinfo=UTC)
        except ValueError:
            continue
        return when if in_time_span(when) else None
    raise MalformedCapture(
        f"{path}:{number}: timestamp {one_line(repr(cell))} is not YYYY/MM/DD HH:MM:SS.mmm"
    )


def _given_header(fields: Sequence[str]) -> Header:
    """The header of a nvidia-smi CSV written without one, from its ``--query-gpu`` list."""
    cells = [cell.strip() for field in fields for cell in field.split(",")]
    header = _nvidia_smi_header(cells)
    if header is None:
        named = ", ".join(cells) or "nothing"
        raise MalformedCapture(
            f"--fields {named}: not a --query-gpu list zest reads; give the properties the file was "
            f"recorded with, in order, including {metrics.NVIDIA_SMI_UTILIZATION} (e.g. {_FIELDS_EXAMPLE})"
        )
    return header


def _parse_nvidia_smi(path: Path, lines: Sequence[str], clock: Clock, given: Header | None) -> Parsed:
    header: Header | None = given
    gpu_field: str | None = None
    if given is not None:
        _check_nvidia_smi_header(path, 1, given)
        gpu_field = next((f for f in metrics.NVIDIA_SMI_GPU_FIELDS if f in (n for n, _ in given)), None)
    repeated_headers = 0
    missing_cells = 0
    rows: list[Row] = []
    numbers: list[int] = []
    ticks: list[int] = []  # the tick (one loop of nvidia-smi over the GPUs) of each row
    tick_gpus: set[str] = set()
    position = 0  # the row's place within its tick, naming the GPU where the file names none
    last_time: datetime | None = None
    timed = untimed = unnamed = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        cells = [cell.strip() for cell in _csv_cells(path, number, stripped)]
        new_header = _nvidia_smi_header(cells)
        if new_header is not None:
            # Logs appended by several runs repeat the header; a later run may query other fields.
            repeated_headers += header is not None
            _check_nvidia_smi_header(path, number, new_header)
            header = new_header
            names = [name for name, _ in header]
            gpu_field = next((f for f in metrics.NVIDIA_SMI_GPU_FIELDS if f in names), None)
            continue
        if header is None:
            raise MalformedCapture(f"{path}:{number}: a record before the nvidia-smi CSV header")
        if len(cells) != len(header):
            columns = "fields given with --fields" if header is given else "columns of the header"
            raise MalformedCapture(f"{path}:{number}: {len(cells)} cells for the {len(header)} {columns}")
        row: Row = {}
        for (name, unit), cell in zip(header, cells, strict=True):
            if name == metrics.NVIDIA_SMI_TIMESTAMP:
                row[TIMESTAMP] = _nvidia_smi_time(path, number, cell)
            elif name == gpu_field:
                row[GPU] = cell
            elif name == metrics.NVIDIA_SMI_MODEL:
                row[GPU_MODEL] = cell
            elif name in _NVIDIA_SMI_BY_NAME:
                known = _NVIDIA_SMI_BY_NAME[name]
                # Without a header (or with nounits) the unit is the property's own, where cells show one.
                value = _nvidia_smi_value(path, number, name, unit or known.unit, cell)
                missing_cells += math.isnan(value)
                row[known.signal] = value * known.scale
        has_time = metrics.NVIDIA_SMI_TIMESTAMP in (name for name, _ in header)
        timed, untimed = timed or has_time, untimed or not has_time
        when = row.get(TIMESTAMP)
        gpu = row.get(GPU)
        # A new tick: the GPU is seen again, or (no GPU named) the time jumps past the spread of one tick.
        if gpu is not None:
            new_tick = gpu in tick_gpus
        elif isinstance(when, datetime) and isinstance(last_time, datetime):
            new_tick = not timedelta(0) <= when - last_time < _NVIDIA_SMI_TICK_GAP
        else:
            new_tick = False
        if not rows or new_tick:
            ticks.append(ticks[-1] + 1 if ticks else 0)
            tick_gpus, position = set(), 0
        else:
            ticks.append(ticks[-1])
        if gpu is None:
            unnamed = True
            gpu = row[GPU] = str(position)
        tick_gpus.add(str(gpu))
        position += 1
        last_time = when if isinstance(when, datetime) else last_time
        rows.append(row)
        numbers.append(number)
    if not rows:
        raise MalformedCapture(f"{path}:{len(lines)}: nvidia-smi CSV with a header but no records")
    util = canonical_signal("gpu_util_ratio")
    if all(math.isnan(float(row.get(util, math.nan))) for row in rows):  # type: ignore[arg-type]
        raise MalformedCapture(
            f"{path}:{numbers[0]}: {metrics.NVIDIA_SMI_UTILIZATION} is [N/A] or [Not Supported] in every "
            "record (as nvidia-smi gives it with MIG enabled, or on a GPU that does not support it): no "
            "utilization or activity signal; record dcgm-exporter or dcgmi dmon "
            "(DCGM_FI_PROF_GR_ENGINE_ACTIVE) instead"
        )
    notes = []
    if timed:
        notes.append(nvsmi_text.LOCAL_TIME_NOTE)
    if untimed:
        untimed_ticks = sorted({tick for tick, row in zip(ticks, rows, strict=True) if TIMESTAMP not in row})
        times, how = clock.times(
            len(untimed_ticks), _NVIDIA_SMI_LOOP_SECONDS, "nvidia-smi ticks without timestamps"
        )
        at = dict(zip(untimed_ticks, times, strict=True))
        for tick, row in zip(ticks, rows, strict=True):
            if TIMESTAMP not in row:
                row[TIMESTAMP] = at[tick]
        notes.append(
            f"no timestamp column: {len(untimed_ticks)} tick(s) (a new one where a GPU repeats), {how}"
        )
    if unnamed:
        fields = ", ".join(metrics.NVIDIA_SMI_GPU_FIELDS)
        notes.append(
            f"the file names no GPU ({fields}): GPUs named 0, 1, ... by their row order within each tick"
        )
    if missing_cells:
        notes.append(f"{missing_cells} cell(s) reading [N/A], [Not Supported] or the like taken as missing")
    if repeated_headers:
        notes.append(f"{repeated_headers} repeated header line(s) skipped (log appended by several runs)")
    return Parsed(rows, notes, NVIDIA_SMI, numbers)


def _nvidia_smi_value(path: Path, number: int, name: str, unit: str | None, cell: str) -> float:
    if cell == "N/A" or (cell.startswith("[") and cell.endswith("]")):
        return math.nan  # [N/A], [Not Supported], [Unknown Error], [GPU is lost]
    text = cell[: -len(unit)].rstrip() if unit and cell.endswith(unit) else cell
    try:
        return float(text)
    except ValueError:
        unit_text = f" in {unit}" if unit else ""
        raise MalformedCapture(
            f"{path}:{number}: {name} value {one_line(repr(cell))} is not a number{unit_text}"
        ) from None


# --- dcgmi dmon ----------------------------------------------------------------

_DMON_BY_SHORT_NAME = {f.short_name: f for f in metrics.DCGM_DMON_FIELDS}
_DMON_HEADER_WITHIN = 20  # lines of terminal output before dmon's #Entity header that are looked past
_DMON_BY_ID = {f.field_id: f for f in metrics.DCGM_DMON_FIELDS}
_DMON_ERROR = re.compile(r"(Error|Failed|Unable)\b", re.IGNORECASE)  # dcgmi's messages when it cannot go on
# Escape sequences of a terminal (colours, cursor moves) and carriage returns, left in output copied from it.
_TERMINAL_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
_DMON_MISSING = re.compile(r"N/[A-Z]")  # N/A blank, N/W not watched, N/S not supported
_DMON_ENTITY_KIND = re.compile(r"[A-Za-z][A-Za-z-]*")
# GPU rows name the GPU by index; MIG instances use dcgmi's own i:/ci: entity syntax.
_DMON_GPU_ENTITIES = {"GPU": "{}", "GPU-I": "i:{}", "GPU-CI": "ci:{}"}


def _dmon_header(line: str) -> list[str]:
    """The fields of a ``#Entity`` header, by dmon's short name; a field printed by its id is named by it."""
    fields = line.split("Entity", 1)[1].split()
    return [_DMON_BY_ID[int(f)].short_name if f.isdigit() and int(f) in _DMON_BY_ID else f for f in fields]


def _parse_dmon(path: Path, lines: Sequence[str], clock: Clock) -> Parsed:
    fields: list[str] | None = None
    unknown_fields: set[str] = set()
    other_entities: set[str] = set()
    missing_cells = 0
    sample = 0
    in_sample: set[str] = set()
    samples: list[tuple[int, str, dict[str, float]]] = []
    numbers: list[int] = []
    errors: list[tuple[int, str]] = []  # dcgmi's own error lines, e.g. when it cannot watch a field
    ragged: list[int] = []  # rows with another number of values than the header has fields
    noise: list[int] = []  # terminal output around dmon's: prompts, the command, ^C
    for number, raw_line in enumerate(lines, 1):
        line = _TERMINAL_CONTROL.sub("", raw_line)
        tokens = line.split()
        if not tokens:
            continue
        if line.lstrip().startswith(("#Entity", "# Entity")):
            fields = _dmon_header(line)
            unknown_fields.update(f for f in fields if f not in _DMON_BY_SHORT_NAME)
            continue
        if tokens[0].upper() == "ID" or tokens[0].startswith("#"):
            continue  # the units line under the header, comments
        if _DMON_ERROR.match(line.strip()):
            errors.append((number, line.strip()))
            continue
        kind, entity, values = tokens[0], tokens[1] if len(tokens) > 1 else "", tokens[2:]
        if fields is None or not (_DMON_ENTITY_KIND.fullmatch(kind) and entity.isdigit()):
            noise.append(number)
            continue
        if len(values) != len(fields):
            ragged.append(number)
            continue
        if kind not in _DMON_GPU_ENTITIES:
            other_entities.add(kind)
            continue
        gpu = _DMON_GPU_ENTITIES[kind].format(entity)
        if gpu in in_sample:  # the entity comes round again: a new sample
            sample += 1
            in_sample.clear()
        in_sample.add(gpu)
        raw: dict[str, float] = {}
        for name, cell in zip(fields, values, strict=True):
            known = _DMON_BY_SHORT_NAME.get(name)
            if known is None:
                continue
            if _DMON_MISSING.fullmatch(cell):
                missing_cells += 1
                raw[known.dcgm_name] = math.nan
                continue
            try:
                raw[known.dcgm_name] = float(cell)
            except ValueError:
                raise MalformedCapture(
                    f"{path}:{number}: {name} value {one_line(repr(cell))} is not a number"
                ) from None
        samples.append((sample, gpu, raw))
        numbers.append(number)
    if not samples:
        if errors:
            number, error = errors[0]
            raise MalformedCapture(
                f"{path}:{number}: dcgmi dmon printed an error and no samples "
                f"({one_line(repr(error))}): mend what DCGM reports and record again"
            )
        if ragged:
            raise MalformedCapture(
                f"{path}:{ragged[0]}: dcgmi dmon rows with another number of values than the "
                f"{len(fields or ())} fields of the #Entity header, and no whole row"
            )
        if fields is None:
            raise MalformedCapture(
                f"{path}:{noise[0] if noise else 1}: dcgmi dmon output without its #Entity header"
            )
        raise MalformedCapture(f"{path}:{len(lines)}: dcgmi dmon output without GPU rows")
    times, placed = clock.times(sample + 1, DMON_INTERVAL_SECONDS, f"{sample + 1} dmon sample(s)")
    rows: list[Row] = [{TIMESTAMP: times[k], GPU: gpu, **_dcgm_signals(raw)} for k, gpu, raw in samples]
    notes = [f"dcgmi dmon prints no timestamps: {placed}"]
    if missing_cells:
        notes.append(f"{missing_cells} cell(s) reading N/A or N/W (not watched) taken as missing")
    if unknown_fields:
        notes.append(f"dmon fields zest does not use ignored: {', '.join(sorted(unknown_fields))}")
    if other_entities:
        notes.append(f"rows of non-GPU entities ignored: {', '.join(sorted(other_entities))}")
    if ragged:
        notes.append(
            f"{len(ragged)} row(s) with another number of values than the header's fields skipped, "
            f"the first at {path}:{ragged[0]}"
        )
    if errors:
        notes.append(f"{len(errors)} dcgmi error line(s) skipped, the first at {path}:{errors[0][0]}")
    if noise:
        notes.append(f"{len(noise)} line(s) of other terminal output skipped, the first at {path}:{noise[0]}")
    return Parsed(rows, notes, DCGMI_DMON, numbers)


# --- Prometheus text exposition ------------------------------------------------

_PROMETHEUS_SAMPLE = re.compile(
    r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?\s+[-+]?([0-9.]+([eE][-+]?[0-9]+)?|NaN|Inf)(\s+-?[0-9]+)?"
)
_SERIES_KEY = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?")
# A series as a Prometheus UI or API listing shows it: labels, no sample value.
_PROMETHEUS_LISTED_SERIES = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{.*\}")
# A label set an author shortened by hand: `{gpu="0",...,modelName="L40S",...}`.
_ELIDED_LABELS = re.compile(r"\{(.*,)?\s*(\.\.\.|\u2026)\s*(,.*)?\}")
_ELISION = frozenset({"...", "\u2026"})  # a line an author put where they cut the output
_DCGM_NAMES = frozenset(
    {m.name for m in metrics.DCGM_METRICS}
    | {metrics.DCGM_GR_ENGINE_ACTIVE.name, metrics.DCGM_NVLINK_TOTAL}
    | {metrics.DCGM_FB_FREE, metrics.DCGM_FB_RESERVED, metrics.DCGM_FB_TOTAL, *metrics.DCGM_NVLINK_BYTES}
)
_JOBSTATS_NAMES = frozenset(m.name for m in metrics.JOBSTATS_METRICS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PORT = re.compile(r"\[?(.*?)\]?:\d+")

# (scrape index, sample timestamp in ms or None, host, gpu, job id, gpu model)
_SeriesKey = tuple[int, int | None, str | None, str | None, str | None, str | None]
# The timestamp of a sample stamped outside the span samples can have: its row is timed NaT and dropped.
_IMPOSSIBLE_MS = -(2**63)


def _line_key(line: str) -> str | None:
    """What marks a scrape's first line: a family's HELP or TYPE header, or a series."""
    stripped = line.strip()
    if not stripped:
        return None
    if stripped.startswith("#"):
        parts = stripped.split(None, 3)
        return " ".join(parts[:3]) if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") else None
    match = _SERIES_KEY.match(stripped)
    return match.group(0) if match else None


def _split_scrapes(lines: Sequence[str]) -> list[tuple[int, list[str]]]:
    """``[(first line number, lines), ...]``, one per scrape; a scrape begins where the first line recurs."""
    scrapes: list[tuple[int, list[str]]] = []
    first: str | None = None
    for number, line in enumerate(lines, 1):
        key = _line_key(line)
        if first is None and key is not None:
            first = key
        if (key is not None and key == first) or not scrapes:
            scrapes.append((number, []))
        scrapes[-1][1].append(line)
    return scrapes


def _families(path: Path, first_number: int, chunk: list[str]) -> list[Metric]:
    try:
        return list(text_string_to_metric_families("\n".join(chunk) + "\n"))
    except ValueError as chunk_error:
        number, error = first_number, str(chunk_error)
        for offset, line in enumerate(chunk):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    list(text_string_to_metric_families(line + "\n"))
                except ValueError as line_error:
                    number, error = first_number + offset, str(line_error)
                    break
        raise MalformedCapture(
            f"{path}:{number}: not Prometheus text exposition ({one_line(error)})"
        ) from None


def _label(labels: Mapping[str, str], names: Sequence[str]) -> str | None:
    for name in names:
        if labels.get(name):
            return labels[name]
    return None


def _host(labels: Mapping[str, str], names: Sequence[str]) -> str | None:
    host = _label(labels, names)
    match = _PORT.fullmatch(host) if host else None
    return match.group(1) if match else host  # jobstats' instance label is host:port


def _with_mig(gpu: str | None, instance: str | None) -> str | None:
    return mig_gpu(gpu, instance) if gpu and instance else gpu


def _dcgm_identity(labels: Mapping[str, str]) -> tuple[str | None, str | None, str | None, str | None]:
    gpu = _label(labels, (metrics.DCGM_GPU_LABEL, metrics.DCGM_UUID_LABEL, metrics.GMT_UUID_LABEL))
    gpu = _with_mig(gpu, labels.get(metrics.DCGM_MIG_INSTANCE_LABEL))
    job = metrics.job_id_from_labels(labels, metrics.DCGM_STORED_JOB_LABELLINGS)
    model = labels.get(metrics.DCGM_MODEL_LABEL) or None
    return _host(labels, metrics.DCGM_STORED_HOST_LABELS), gpu, job, model


def _dcgm_reading_notes(samples: Iterable[Mapping[str, float]], blanks: int) -> list[str]:
    """What reading dcgm-exporter samples (each a series name -> value) took as missing or stood in for:
    DCGM's blank values, and GR_ENGINE_ACTIVE read as utilization where GPU_UTIL is absent."""
    notes = []
    if blanks:
        notes.append(
            f"{blanks} value(s) reading DCGM's blank (field not supported or not found) taken as missing"
        )
    gr_engine = metrics.DCGM_GR_ENGINE_ACTIVE
    gpu_util = metrics.dcgm_metric_for(gr_engine.signal)
    from_gr_engine = sum(gr_engine.name in raw and gpu_util not in raw for raw in samples)
    if from_gr_engine:
        notes.append(
            f"{from_gr_engine} sample(s) with {gr_engine.name} but no {gpu_util} (dcgm-exporter "
            f"publishes none for MIG instances): {gr_engine.signal} read from the former"
        )
    return notes


def _is_dcgm_blank(value: float) -> bool:
    """Whether ``value`` is one of DCGM's blank values (not supported, not found, ...), not a reading."""
    fp64_blank = metrics.DCGM_FP64_BLANK <= value < metrics.DCGM_FP64_BLANK + metrics.DCGM_BLANK_SPAN
    # The int64 blanks all round to 2**63 as floats, past any int64 reading.
    return fp64_blank or value >= float(metrics.DCGM_INT64_BLANK)


def _check_prometheus_lines(path: Path, lines: Sequence[str]) -> tuple[list[str], int]:
    """``lines`` with the lines an author put where they cut the output blanked (numbers kept), and
    their count. Raises :class:`MalformedCapture` for a series listed without a value, or whose labels
    were shortened by hand: neither is what an exporter writes, and filling in either would be a guess."""
    kept: list[str] = []
    elided = 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped in _ELISION:
            elided += 1
            kept.append("")
            continue
        if stripped and not stripped.startswith("#"):
            if _ELIDED_LABELS.search(stripped):
                raise MalformedCapture(
                    f"{path}:{number}: labels cut short with '...' (an edited excerpt): the GPU, host and "
                    "job of the series are unknown; save the exporter's /metrics output whole"
                )
            if _PROMETHEUS_LISTED_SERIES.fullmatch(stripped):
                raise MalformedCapture(
                    f"{path}:{number}: a series without a sample value (a Prometheus UI or API listing, "
                    "not a scrape): save the exporter's /metrics output"
                )
        kept.append(line)
    return kept, elided


def _jobstats_identity(labels: Mapping[str, str]) -> tuple[str | None, str | None, str | None, str | None]:
    gpu = _label(labels, (*metrics.JOBSTATS_GPU_LABELS, metrics.JOBSTATS_UUID_LABEL))
    gpu = _with_mig(gpu, labels.get(metrics.JOBSTATS_MIG_INSTANCE_LABEL))
    job = metrics.job_id_from_labels(labels, metrics.JOBSTATS_JOB_LABELLINGS)
    model = labels.get(metrics.JOBSTATS_MODEL_LABEL) or None
    return _host(labels, metrics.JOBSTATS_HOST_LABELS), gpu, job, model


def _parse_prometheus(path: Path, lines: Sequence[str], clock: Clock) -> Parsed:
    lines, elided = _check_prometheus_lines(path, lines)
    scrapes = _split_scrapes(lines)
    series: dict[_SeriesKey, dict[str, float]] = {}
    untimed = 0
    blanks = 0
    for index, (first_number, chunk) in enumerate(scrapes):
        for family in _families(path, first_number, chunk):
            for sample in family.samples:
                name = metrics.GMT_DCGM_FIELDS.get(sample.name, sample.name)
                if name in _DCGM_NAMES:
                    identity = _dcgm_identity(sample.labels)
                elif name in _JOBSTATS_NAMES:
                    identity = _jobstats_identity(sample.labels)
                else:
                    continue
                timestamp_ms = None if sample.timestamp is None else _timestamp_ms(float(sample.timestamp))
                untimed += timestamp_ms is None
                key = (index, timestamp_ms, *identity)
                raw = series.setdefault(key, {})
                if _is_dcgm_blank(float(sample.value)):
                    blanks += 1  # no reading: as if the series were absent
                else:
                    raw[name] = float(sample.value)
    if not series:
        raise MalformedCapture(
            f"{path}:1: Prometheus text without dcgm-exporter or jobstats GPU series that zest reads "
            f"(e.g. {metrics.DCGM_METRICS[0].name}, {metrics.DCGM_GR_ENGINE_ACTIVE.name}, "
            f"{metrics.JOBSTATS_METRICS[0].name})"
        )
    notes = [f"{len(scrapes)} scrape(s) read"]
    if elided:
        notes.append(f"{elided} line(s) reading '...' (where the output was cut) skipped")
    notes.extend(_dcgm_reading_notes(series.values(), blanks))
    scrape_times: list[datetime | None] = []
    if untimed:
        scrape_times, placed = clock.times(len(scrapes), SCRAPE_INTERVAL_SECONDS, f"{len(scrapes)} scrape(s)")
        notes.append(f"{untimed} sample(s) without timestamps: {placed}")
    rows: list[Row] = []
    numbers: list[int] = []
    for (index, timestamp_ms, host, gpu, job, model), raw in series.items():
        when: datetime | None
        if timestamp_ms is None:
            when = scrape_times[index]
        elif timestamp_ms == _IMPOSSIBLE_MS:
            when = None
        else:
            when = _EPOCH + timedelta(milliseconds=timestamp_ms)
        signals = _dcgm_signals(raw) | _jobstats_signals(raw)
        rows.append({TIMESTAMP: when, HOST: host, GPU: gpu, JOB_ID: job, GPU_MODEL: model, **signals})
        numbers.append(scrapes[index][0])  # a row gathers samples of several lines: name its scrape's first
    return Parsed(rows, notes, PROMETHEUS, numbers)


def _timestamp_ms(seconds: float) -> int:
    """A sample's time in ms since the epoch, or :data:`_IMPOSSIBLE_MS` outside the span samples can have."""
    return round(seconds * 1000) if in_epoch_span(seconds) else _IMPOSSIBLE_MS


# --- Prometheus HTTP API answer (JSON) ------------------------------------------

_API_RESULT_TYPES = ("vector", "matrix")  # the answers that hold series: instant and range queries
_API_NAME = "__name__"


def _is_prometheus_api_answer(path: Path, text: str) -> bool:
    """Whether ``text`` is a Prometheus HTTP API answer; raises :class:`MalformedCapture` if cut short."""
    try:
        answer = json.loads(text)
    except ValueError as exc:
        if '"resultType"' in text or '"status"' in text:
            line = exc.lineno if isinstance(exc, json.JSONDecodeError) else 1
            raise MalformedCapture(
                f"{path}:{line}: a Prometheus API answer that is not valid JSON ({one_line(exc)}): "
                "save the answer whole"
            ) from None
        return False
    if not isinstance(answer, dict):
        return False
    return answer.get("status") == "error" or (answer.get("status") == "success" and "data" in answer)


def _api_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(value)
    return float(value)


def _api_points(
    path: Path, entry: Mapping[str, object], result_type: str, name: str
) -> list[tuple[float, float]]:
    raw_points = [entry.get("value")] if result_type == "vector" else entry.get("values")
    if not isinstance(raw_points, list):
        raise MalformedCapture(
            f"{path}:1: series {name} of the {result_type} answer has no "
            f"{'value' if result_type == 'vector' else 'values'}"
        )
    points: list[tuple[float, float]] = []
    for point in raw_points:
        try:
            if not isinstance(point, list) or len(point) != 2:
                raise ValueError(point)
            points.append((_api_number(point[0]), _api_number(point[1])))
        except (ValueError, TypeError):
            raise MalformedCapture(
                f'{path}:1: series {name} holds {one_line(repr(point))}, not a [time, "value"] pair'
            ) from None
    return points


def _parse_prometheus_api(path: Path, text: str) -> Parsed:
    answer = json.loads(text)  # detection parsed it already
    if answer.get("status") != "success":
        what = one_line(f"{answer.get('errorType', 'error')}: {answer.get('error', 'no message')}")
        raise MalformedCapture(f"{path}:1: a Prometheus API error answer ({what}): it holds no telemetry")
    data = answer.get("data")
    result_type = data.get("resultType") if isinstance(data, dict) else None
    results = data.get("result") if isinstance(data, dict) else None
    if result_type not in _API_RESULT_TYPES or not isinstance(results, list):
        raise MalformedCapture(
            f"{path}:1: a Prometheus API answer of type {one_line(repr(result_type))}, which holds no "
            "per-GPU series: save the vector or matrix answer of a query for dcgm-exporter or jobstats series"
        )
    series: dict[tuple[int, str | None, str | None, str | None, str | None], dict[str, float]] = {}
    unnamed = 0
    without_gpu = 0
    blanks = 0
    read = 0
    unread: set[str] = set()
    for number, entry in enumerate(results, 1):
        metric = entry.get("metric") if isinstance(entry, dict) else None
        if not isinstance(metric, dict):
            raise MalformedCapture(
                f"{path}:1: result {number} of the answer is not a series (no metric labels)"
            )
        labels = {str(key): str(value) for key, value in metric.items()}
        if not labels.get(_API_NAME):
            unnamed += 1
            continue
        name = metrics.GMT_DCGM_FIELDS.get(labels[_API_NAME], labels[_API_NAME])
        if name in _DCGM_NAMES:
            identity = _dcgm_identity(labels)
        elif name in _JOBSTATS_NAMES:
            identity = _jobstats_identity(labels)
        else:
            unread.add(name)
            continue
        if identity[1] is None:
            without_gpu += 1
            continue
        read += 1
        for seconds, value in _api_points(path, entry, result_type, name):
            raw = series.setdefault((_timestamp_ms(seconds), *identity), {})
            if _is_dcgm_blank(value):
                blanks += 1
            else:
                raw[name] = value
    held = f" (it holds {', '.join(sorted(unread)[:_JOBS_NAMED])})" if unread else ""
    skipped = []
    if unnamed:
        skipped.append(
            f"{unnamed} series without a metric name (a function or aggregation such as avg_over_time or "
            "sum drops __name__, so which metric they hold is unknown)"
        )
    if without_gpu:
        skipped.append(f"{without_gpu} GPU series without per-GPU labels (an aggregated answer)")
    if not series:
        what = (
            "; ".join(skipped)
            if skipped
            else (
                f"no dcgm-exporter or jobstats GPU series that zest reads{held}" if results else "no series"
            )
        )
        raise MalformedCapture(
            f"{path}:1: a Prometheus API {result_type} answer with {what}: save the answer of a query "
            f"for the raw per-GPU series (e.g. {metrics.DCGM_METRICS[0].name}, "
            f"{metrics.JOBSTATS_METRICS[0].name})"
        )
    notes = [f"Prometheus API {result_type} answer: {read} series read, at their own timestamps"]
    notes.extend(f"{reason}: skipped" for reason in skipped)
    if unread:
        notes.append(f"series zest does not use ignored: {', '.join(sorted(unread))}")
    notes.extend(_dcgm_reading_notes(series.values(), blanks))
    rows: list[Row] = []
    for (timestamp_ms, host, gpu, job, model), raw in series.items():
        at = None if timestamp_ms == _IMPOSSIBLE_MS else _EPOCH + timedelta(milliseconds=timestamp_ms)
        signals = _dcgm_signals(raw) | _jobstats_signals(raw)
        rows.append({TIMESTAMP: at, HOST: host, GPU: gpu, JOB_ID: job, GPU_MODEL: model, **signals})
    return Parsed(rows, notes, PROMETHEUS_API, [1] * len(rows))


# --- zest Parquet --------------------------------------------------------------

_PARQUET_BATCH_ROWS = 1 << 20


def _parquet_frame(parquet: pq.ParquetFile) -> pd.DataFrame:
    """The telemetry columns of ``parquet``, read batch by batch straight into the frame's arrays.

    Measured on a month of 1 Hz samples of 8 GPUs against ``read_table(...).to_pandas()``: about 40 %
    less time and 1.3 GiB less peak memory, as only one batch of Arrow buffers is alive at a time and
    each value is copied once. Labels become categories (codes into the names each batch's dictionary
    holds); a column the file lacks is left for :func:`conform` to add.
    """
    rows = parquet.metadata.num_rows
    schema = parquet.schema_arrow
    present = [c for c in COLUMNS if c in schema.names]
    if TIMESTAMP in present and not pa.types.is_timestamp(time_type := schema.field(TIMESTAMP).type):
        raise SchemaError(f"column {TIMESTAMP} holds {time_type}, not times")
    arrays: dict[str, npt.NDArray[Any]] = {
        c: np.empty(rows, dtype=np.int64 if c == TIMESTAMP else np.int32 if c in LABELS else np.float64)
        for c in present
    }
    names: dict[str, dict[str, int]] = {c: {} for c in present if c in LABELS}
    at = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=present):
        end = at + batch.num_rows
        for column, values in zip(present, batch.columns, strict=True):
            if column == TIMESTAMP:  # ticks since the epoch in the file's unit; naive times are UTC
                arrays[column][at:end] = values.cast(pa.int64()).to_numpy(zero_copy_only=False)
            elif column in LABELS:
                arrays[column][at:end] = _label_codes(values, names[column])
            else:
                arrays[column][at:end] = values.to_numpy(zero_copy_only=False)
        at = end
    columns: dict[str, Any] = {}
    for column in present:
        if column == TIMESTAMP:
            unit = schema.field(TIMESTAMP).type.unit
            columns[column] = pd.to_datetime(arrays[column].view(f"datetime64[{unit}]"), utc=True)
        elif column in LABELS:
            categories = pd.Index(list(names[column]), dtype=str)
            columns[column] = pd.Categorical.from_codes(arrays[column], categories)
        else:
            columns[column] = arrays[column]
    return pd.DataFrame(columns, copy=False)


def _label_codes(values: pa.Array, names: dict[str, int]) -> npt.NDArray[np.int32]:
    """Codes of a batch's label column in ``names`` (name -> code, extended with the batch's new names);
    -1 where the label is missing."""
    if not pa.types.is_dictionary(values.type):
        values = values.cast(pa.string()).dictionary_encode()
    dictionary = [None if name is None else str(name) for name in values.dictionary.to_pylist()]
    lookup = np.array(
        [-1 if name is None else names.setdefault(name, len(names)) for name in dictionary] + [-1],
        dtype=np.int32,
    )
    indices = values.indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False)
    return lookup[indices]


def _read_parquet(path: Path, data: bytes | Path) -> tuple[pd.DataFrame, list[str]]:
    def source() -> pa.BufferReader | Path:
        return pa.BufferReader(data) if isinstance(data, bytes) else data

    try:
        parquet = pq.ParquetFile(source())
        # Labels stay dictionary-encoded as Parquet stores them: categories, not a string per row.
        labels = [c for c in LABELS if c in parquet.schema_arrow.names]
        if labels:
            parquet = pq.ParquetFile(source(), read_dictionary=labels)
    except (pa.ArrowException, OSError, ValueError) as exc:  # pyarrow's ArrowIOError is an OSError
        raise MalformedCapture(f"{path}: unreadable Parquet ({one_line(str(exc))})") from None
    raw_header = (parquet.schema_arrow.metadata or {}).get(METADATA_KEY)
    if raw_header is None:
        raise MalformedCapture(
            f"{path}: Parquet without {METADATA_KEY.decode()} metadata is not a zest capture; "
            f"accepted formats: {ACCEPTED_FORMATS}"
        )
    try:
        header = json.loads(raw_header)
        version = header["format_version"]
        notes = [str(note) for note in header.get("notes", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MalformedCapture(f"{path}: bad {METADATA_KEY.decode()} metadata ({one_line(exc)})") from None
    if version != FORMAT_VERSION:
        raise MalformedCapture(
            f"{path}: zest capture format {version}; this zest reads format {FORMAT_VERSION}: "
            "read it with a matching zest"
        )
    try:
        frame = conform(_parquet_frame(parquet), sort=False)  # written sorted
    except (SchemaError, pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise MalformedCapture(
            f"{path}: zest capture does not hold the telemetry frame ({one_line(exc)})"
        ) from None
    frame, screened = screen(frame, lambda row: f"{path}: row {row + 1}")
    return frame, [*notes, *screened]
