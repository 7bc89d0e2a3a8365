"""nvidia-smi's text outputs read as capture files: ``dmon``, ``pmon``, ``-q`` and ``-q -x`` (XML).

:func:`detect` recognises each from its first meaningful lines; :func:`parse` reads it into
:class:`collectors.textcapture.Parsed` rows keyed by the canonical columns.

* ``nvidia-smi dmon`` with any ``-s`` selection, with or without ``-o D``/``-o T`` date and time
  columns, any number of GPUs, headers repeated in long logs. ``-`` (unsupported) is missing.
  Without the ``sm`` column (``-s u``) a log holds no utilization and is refused.
* ``nvidia-smi pmon``: per-process rows summed per GPU and sample; the PIDs seen on each GPU are
  kept in :attr:`Parsed.pids`, so a job can be selected by its processes.
* ``nvidia-smi -q`` text and ``-q -x`` XML: one snapshot per log, a row per GPU and one per MIG
  device (``<gpu index>/<GPU instance id>``, with its memory only: nvidia-smi reports no
  utilization or power per MIG device).

nvidia-smi prints the node's local time without a zone: its times are read as UTC, as
:mod:`collectors.files` reads its CSV. Outputs without times are placed by the :class:`Clock`.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

from collectors import metrics
from collectors.errors import MalformedCapture
from collectors.schema import GPU, GPU_MODEL, TIMESTAMP, canonical_signal, in_time_span, mig_gpu
from collectors.textcapture import Clock, Parsed, Row
from collectors.util import one_line

NVIDIA_SMI_DMON = "nvidia-smi dmon"
NVIDIA_SMI_PMON = "nvidia-smi pmon"
NVIDIA_SMI_QUERY = "nvidia-smi -q"
NVIDIA_SMI_QUERY_XML = "nvidia-smi -q -x"
FORMATS: tuple[str, ...] = (NVIDIA_SMI_DMON, NVIDIA_SMI_PMON, NVIDIA_SMI_QUERY, NVIDIA_SMI_QUERY_XML)

LOOP_INTERVAL_SECONDS = 1.0  # dmon's and pmon's default -d 1; -q -l has no default: 1 s unless told

_UTIL = canonical_signal("gpu_util_ratio")
_MEM_USED = canonical_signal("mem_used_bytes")
LOCAL_TIME_NOTE = "nvidia-smi prints local time without a zone: timestamps assumed UTC"
# What a signal is called in a refusal that says what a file holds instead of utilization.
_HELD = {
    "mem_used_bytes": "memory",
    "mem_total_bytes": "memory",
    "power_watts": "power",
    "pcie_tx_bytes_per_second": "PCIe throughput",
    "pcie_rx_bytes_per_second": "PCIe throughput",
}
# Values nvidia-smi prints where it has none ("[N/A]" and other bracketed ones too).
_MISSING_WORDS = frozenset(
    {
        "n/a",
        "not supported",
        "not available",
        "unknown error",
        "insufficient permissions",
        "requested functionality has been deprecated",
        "gpu is lost",
        "not found",
        "unknown",
    }
)
_DIGITS = re.compile(r"[0-9]+")
_NUMBER_WITH_UNIT = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(\S.*)?")


def _is_missing(text: str) -> bool:
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        return True  # [N/A], [Not Supported], [Unknown Error], [GPU is lost]
    return stripped.lower() in _MISSING_WORDS


def _is_count(text: str) -> bool:
    """Whether ``text`` is an index, process id or count: ASCII digits (``str.isdigit`` takes ``²``)."""
    return _DIGITS.fullmatch(text) is not None


def _held(rows: Sequence[Row]) -> str:
    """What signals ``rows`` hold, in words: ``memory and power``."""
    held: list[str] = []
    for signal, word in _HELD.items():
        present = any(isinstance(v := row.get(signal), float) and not math.isnan(v) for row in rows)
        if present and word not in held:
            held.append(word)
    if not held:
        return "no signal zest reads"
    return ", ".join(held[:-1]) + " and " + held[-1] if len(held) > 1 else held[0]


def _has_utilization(rows: Sequence[Row]) -> bool:
    return any(isinstance(v := row.get(_UTIL), float) and not math.isnan(v) for row in rows)


# --- detection -------------------------------------------------------------------------------------

_QUERY_BANNER = re.compile(r"=+\s*NVSMI LOG\s*=+")
_QUERY_GPU = re.compile(r"GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])")
_QUERY_TOP_KEY = re.compile(r"(Timestamp|Driver Version|CUDA Version|Attached GPUs)\s*:.*")
_XML_START = ("<?xml", "<!DOCTYPE nvidia_smi_log", "<nvidia_smi_log")
_DETECT_LINES = 5  # meaningful lines an XML declaration may precede <nvidia_smi_log> by


def detect(path: Path, lines: Sequence[str]) -> str | None:
    """Which nvidia-smi text output ``lines`` are (one of :data:`FORMATS`), from the first meaningful
    lines; None if none of them. ``path`` is unused: detection goes by content."""
    del path
    meaningful = list(islice((line.strip() for line in lines if line.strip()), _DETECT_LINES))
    if not meaningful:
        return None
    first = meaningful[0]
    if first.startswith("#"):
        columns = _table_columns(first)
        if columns is None:
            return None
        return NVIDIA_SMI_PMON if metrics.NVIDIA_SMI_PMON_PID in columns else NVIDIA_SMI_DMON
    if _QUERY_BANNER.fullmatch(first) or _QUERY_GPU.fullmatch(first) or _QUERY_TOP_KEY.fullmatch(first):
        return NVIDIA_SMI_QUERY
    if first.startswith(_XML_START) and any("<nvidia_smi_log" in line for line in meaningful):
        return NVIDIA_SMI_QUERY_XML
    return None


def parse(path: Path, lines: Sequence[str], clock: Clock, source_format: str) -> Parsed:
    """Read ``lines`` of ``path``, an nvidia-smi text output of ``source_format`` (from :func:`detect`).

    Raises :class:`MalformedCapture` (``path:line: what is wrong: what to do``) if the output cannot be
    read or holds no utilization signal.
    """
    if source_format == NVIDIA_SMI_DMON:
        return _parse_dmon(path, lines, clock)
    if source_format == NVIDIA_SMI_PMON:
        return _parse_pmon(path, lines, clock)
    if source_format == NVIDIA_SMI_QUERY:
        return _parse_query(path, _query_text(lines), clock, NVIDIA_SMI_QUERY)
    if source_format == NVIDIA_SMI_QUERY_XML:
        return _parse_query(path, _query_xml(path, lines), clock, NVIDIA_SMI_QUERY_XML)
    raise ValueError(f"not an nvidia-smi text format: {source_format!r}")


# --- dmon and pmon: '# gpu ...' tables -------------------------------------------------------------

# A row's time: False where its header has no date and time columns, None where it lies outside the
# span samples can have (the screen drops it).
_RowTime = datetime | bool | None
_DATE = "date"
_TIME = "time"
_DATE_LAYOUT = "%Y%m%d"
_TIME_LAYOUT = "%H:%M:%S"


def _table_columns(line: str) -> list[str] | None:
    """The lower-cased column names if ``line`` is a dmon/pmon header (``# gpu ...``, ``#Date Time gpu``)."""
    names = line.lstrip("#").lower().split()
    leading = 0
    while leading < len(names) and names[leading] in (_DATE, _TIME):
        leading += 1
    if leading < len(names) and names[leading] == metrics.NVIDIA_SMI_DMON_GPU and len(names) > leading + 1:
        return names
    return None


@dataclass
class _Table:
    """The header in force: its columns, and the line it is on."""

    columns: list[str]
    line: int
    units: list[str] | None = None


def _tables(path: Path, lines: Sequence[str], what: str) -> Iterator[tuple[int, _Table, list[str]]]:
    """``(line number, header in force, cells)`` for each row of a dmon or pmon log; headers checked."""
    table: _Table | None = None
    after_header = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            columns = _table_columns(stripped)
            if columns is not None:
                table = _Table(columns, number)
                after_header = True
            elif after_header and table is not None:
                units = stripped.lstrip("#").split()
                if len(units) == len(table.columns):
                    table.units = units
                after_header = False
            continue
        after_header = False
        if table is None:
            raise MalformedCapture(
                f"{path}:{number}: a {what} row before its '# gpu ...' header: keep the header lines"
            )
        last_column = len(table.columns) - 1  # pmon's command may hold spaces: the last cell takes the rest
        cells = stripped.split(None, last_column) if what == NVIDIA_SMI_PMON else stripped.split()
        if what == NVIDIA_SMI_PMON and len(cells) == last_column:
            cells.append("")  # a process without a name
        if len(cells) != len(table.columns):
            raise MalformedCapture(
                f"{path}:{number}: {len(cells)} cells for the {len(table.columns)} columns of the header "
                f"at line {table.line}: the line is cut or not {what} output"
            )
        yield number, table, cells


def _check_kind(path: Path, table: _Table, what: str) -> None:
    """Refuse a header of the other tool (a pmon header in a dmon log, or the reverse)."""
    is_pmon = {metrics.NVIDIA_SMI_PMON_PID, metrics.NVIDIA_SMI_PMON_COMMAND} <= set(table.columns)
    if is_pmon != (what == NVIDIA_SMI_PMON) or len(set(table.columns)) != len(table.columns):
        raise MalformedCapture(
            f"{path}:{table.line}: a header that is not {what}'s "
            f"({one_line(' '.join(table.columns))}): keep one tool's output per file"
        )


def _check_units(path: Path, table: _Table, fields: Sequence[metrics.NvidiaSmiField]) -> None:
    if table.units is None:
        return
    for known in fields:
        if known.name in table.columns:
            unit = table.units[table.columns.index(known.name)]
            if unit != known.unit:
                raise MalformedCapture(
                    f"{path}:{table.line + 1}: column {known.name} is in {unit}, expected {known.unit}"
                )


def _cell(path: Path, number: int, column: str, cell: str) -> float:
    """A dmon or pmon cell as a number; NaN for '-' (unsupported, or no sample of an idle process)."""
    if cell == "-" or _is_missing(cell):
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise MalformedCapture(
            f"{path}:{number}: column {column} value {one_line(repr(cell))} is not a number: "
            "the line is damaged; remove it or record again"
        ) from None


def _gpu_index(path: Path, number: int, cell: str) -> str:
    if not _is_count(cell):
        raise MalformedCapture(
            f"{path}:{number}: column gpu value {one_line(repr(cell))} is not a GPU index: "
            "the line is damaged; remove it or record again"
        )
    return str(int(cell))


def _row_time(path: Path, number: int, table: _Table, cells: Sequence[str]) -> _RowTime:
    """The row's time from -o DT columns (None outside the span samples can have); False if it has none."""
    if _DATE not in table.columns or _TIME not in table.columns:
        return False
    text = f"{cells[table.columns.index(_DATE)]} {cells[table.columns.index(_TIME)]}"
    try:
        when = datetime.strptime(text, f"{_DATE_LAYOUT} {_TIME_LAYOUT}").replace(tzinfo=UTC)
    except ValueError:
        raise MalformedCapture(
            f"{path}:{number}: date and time {one_line(repr(text))} are not YYYYMMDD HH:MM:SS"
        ) from None
    return when if in_time_span(when) else None


def _place(
    times: list[_RowTime], samples: list[int], clock: Clock, what: str
) -> tuple[list[datetime | None], str | None]:
    """Each row's time: its own, or (rows without) its sample's placed by ``clock``; and how."""
    if all(t is not False for t in times):
        return [t if isinstance(t, datetime) else None for t in times], LOCAL_TIME_NOTE
    count = max(samples) + 1 if samples else 0
    placed, how = clock.times(count, LOOP_INTERVAL_SECONDS, f"{count} {what} sample(s)")
    note = f"{what} printed no date and time (-o DT): {how}"
    return [placed[k] for k in samples], note


def _unread(table_columns: set[str], used: set[str]) -> str | None:
    ignored = sorted(table_columns - used - {_DATE, _TIME})
    return f"columns zest does not use ignored: {', '.join(ignored)}" if ignored else None


def _parse_dmon(path: Path, lines: Sequence[str], clock: Clock) -> Parsed:
    fields = metrics.NVIDIA_SMI_DMON_METRICS
    by_name = {f.name: f for f in fields}
    rows: list[Row] = []
    numbers: list[int] = []
    times: list[_RowTime] = []
    samples: list[int] = []
    in_sample: set[str] = set()
    headers: set[int] = set()
    columns: set[str] = set()
    missing = 0
    for number, table, cells in _tables(path, lines, NVIDIA_SMI_DMON):
        if table.line not in headers:
            headers.add(table.line)
            columns.update(table.columns)
            _check_kind(path, table, NVIDIA_SMI_DMON)
            if metrics.NVIDIA_SMI_DMON_UTILIZATION not in table.columns:
                _refuse_dmon_without_sm(path, table)
            _check_units(path, table, fields)
        gpu = _gpu_index(path, number, cells[table.columns.index(metrics.NVIDIA_SMI_DMON_GPU)])
        if gpu in in_sample:  # the GPU comes round again: a new sample
            in_sample.clear()
        if not in_sample:
            samples.append(samples[-1] + 1 if samples else 0)
        else:
            samples.append(samples[-1])
        in_sample.add(gpu)
        row: Row = {GPU: gpu}
        for column, cell in zip(table.columns, cells, strict=True):
            known = by_name.get(column)
            if known is not None:
                value = _cell(path, number, column, cell)
                missing += math.isnan(value)
                row[known.signal] = value * known.scale
        rows.append(row)
        numbers.append(number)
        times.append(_row_time(path, number, table, cells))
    if not rows:
        raise MalformedCapture(f"{path}:{len(lines)}: nvidia-smi dmon output with a header but no rows")
    if not _has_utilization(rows):
        raise MalformedCapture(
            f"{path}:{numbers[0]}: nvidia-smi dmon output whose sm is '-' in every row (holding "
            f"{_held(rows)}): no utilization or activity signal; record dcgm-exporter or dcgmi dmon instead"
        )
    placed, how = _place(times, samples, clock, NVIDIA_SMI_DMON)
    for row, when in zip(rows, placed, strict=True):
        row[TIMESTAMP] = when
    notes = [f"{len(set(samples))} dmon sample(s) of {len({row[GPU] for row in rows})} GPU(s) read"]
    if how:
        notes.append(how)
    if len(headers) > 1:
        notes.append(f"{len(headers) - 1} repeated header line(s) skipped")
    if missing:
        notes.append(f"{missing} cell(s) reading '-' (not supported) taken as missing")
    unread = _unread(columns, {*by_name, metrics.NVIDIA_SMI_DMON_GPU})
    if unread:
        notes.append(
            f"{unread} ('mem' is the memory controller's busy time, which feeds no canonical signal)"
            if "mem" in columns
            else unread
        )
    return Parsed(rows, notes, NVIDIA_SMI_DMON, numbers)


def _refuse_dmon_without_sm(path: Path, table: _Table) -> None:
    held = [f.signal for f in metrics.NVIDIA_SMI_DMON_METRICS if f.name in table.columns]
    what = _held([dict.fromkeys(held, 0.0)])
    shown = ", ".join(c for c in table.columns if c not in (_DATE, _TIME, metrics.NVIDIA_SMI_DMON_GPU))
    raise MalformedCapture(
        f"{path}:{table.line}: nvidia-smi dmon output with columns {shown} holds {what}, no utilization "
        "or activity signal: record with -s u added (e.g. -s pum), which gives the sm column"
    )


@dataclass
class _GpuSample:
    """One GPU's processes in one pmon sample, summed."""

    line: int
    when: _RowTime
    sums: dict[str, float] = field(default_factory=dict)


def _parse_pmon(path: Path, lines: Sequence[str], clock: Clock) -> Parsed:
    fields = metrics.NVIDIA_SMI_PMON_METRICS
    by_name = {f.name: f for f in fields}
    samples: list[dict[str, _GpuSample]] = []
    seen: set[tuple[str, str]] = set()  # (gpu, pid) of the current sample
    last_gpu = -1
    last_time: _RowTime = False
    pids: dict[str, set[int]] = {}
    valued: dict[str, set[str]] = {}  # GPU -> the columns with a value in some row
    headers: set[int] = set()
    columns: set[str] = set()
    for number, table, cells in _tables(path, lines, NVIDIA_SMI_PMON):
        if table.line not in headers:
            headers.add(table.line)
            columns.update(table.columns)
            _check_kind(path, table, NVIDIA_SMI_PMON)
            if fields[0].name not in table.columns:
                _refuse_pmon_without_sm(path, table)
            _check_units(path, table, fields)
        gpu = _gpu_index(path, number, cells[table.columns.index(metrics.NVIDIA_SMI_DMON_GPU)])
        pid_cell = cells[table.columns.index(metrics.NVIDIA_SMI_PMON_PID)]
        if pid_cell != "-" and not _is_count(pid_cell):
            raise MalformedCapture(
                f"{path}:{number}: column pid value {one_line(repr(pid_cell))} is not a process id: "
                "the line is damaged; remove it or record again"
            )
        when = _row_time(path, number, table, cells)
        # A new sample: a process (or an idle GPU's line) comes round again, GPUs start over, time moves.
        if not samples or (gpu, pid_cell) in seen or int(gpu) < last_gpu or when != last_time:
            samples.append({})
            seen.clear()
        seen.add((gpu, pid_cell))
        last_gpu, last_time = int(gpu), when
        sample = samples[-1].setdefault(gpu, _GpuSample(number, when))
        pids.setdefault(gpu, set())
        if pid_cell != "-":
            pids[gpu].add(int(pid_cell))
        for column, cell in zip(table.columns, cells, strict=True):
            known = by_name.get(column)
            if known is None:
                continue
            value = _cell(path, number, column, cell)
            sample.sums.setdefault(known.signal, 0.0)
            if not math.isnan(value):  # '-': no sample of the process in the interval, it was idle
                sample.sums[known.signal] += value * known.scale
                valued.setdefault(gpu, set()).add(known.signal)
    if not samples:
        raise MalformedCapture(f"{path}:{len(lines)}: nvidia-smi pmon output with a header but no rows")
    rows: list[Row] = []
    numbers: list[int] = []
    times: list[_RowTime] = []
    sample_of: list[int] = []
    clamped = 0
    for index, gpus in enumerate(samples):
        for gpu, summed in gpus.items():
            row: Row = {GPU: gpu}
            for signal, total in summed.sums.items():
                # A GPU whose processes never show a value does not report them: missing, not idle.
                value = total if signal in valued.get(gpu, set()) else math.nan
                if signal == _UTIL and value > 1.0:
                    clamped += 1
                    value = 1.0
                row[signal] = value
            rows.append(row)
            numbers.append(summed.line)
            times.append(summed.when)
            sample_of.append(index)
    if not _has_utilization(rows):
        raise MalformedCapture(
            f"{path}:{numbers[0]}: nvidia-smi pmon output whose sm is '-' for every process (holding "
            f"{_held(rows)}): no utilization or activity signal (the GPU reports no per-process "
            "utilization); record nvidia-smi dmon -s u or --query-gpu=utilization.gpu instead"
        )
    placed, how = _place(times, sample_of, clock, NVIDIA_SMI_PMON)
    for row, when in zip(rows, placed, strict=True):
        row[TIMESTAMP] = when
    notes = [
        f"{len(samples)} pmon sample(s) of {len(pids)} GPU(s) read, a new one where a process or GPU "
        "repeats (a process that starts as another ends may merge two samples)",
        "a GPU's utilization is the sum of its processes' sm, a process shown '-' (no sample: idle) "
        "counting 0; processes that run at once (MPS) can sum past 100 %: "
        + (f"{clamped} sample(s) clamped to 100 %" if clamped else "none did here"),
    ]
    unreported = sorted(gpu for gpu in pids if _UTIL not in valued.get(gpu, set()))
    if unreported:
        notes.append(
            f"GPU(s) {', '.join(unreported)} show no process sm value at all: their utilization is missing"
        )
    if how:
        notes.append(how)
    if "fb" in columns:
        notes.append(
            "memory used is the sum of the processes' fb: what the driver keeps outside them is not in it"
        )
    unread = _unread(
        columns,
        {
            *by_name,
            metrics.NVIDIA_SMI_DMON_GPU,
            metrics.NVIDIA_SMI_PMON_PID,
            metrics.NVIDIA_SMI_PMON_COMMAND,
            "type",
        },
    )
    if unread:
        notes.append(unread)
    if len(headers) > 1:
        notes.append(f"{len(headers) - 1} repeated header line(s) skipped")
    processes = sum(len(p) for p in pids.values())
    notes.append(f"{processes} process id(s) seen, kept per GPU to select a job by pid:<pid>")
    return Parsed(rows, notes, NVIDIA_SMI_PMON, numbers, pids)


def _refuse_pmon_without_sm(path: Path, table: _Table) -> None:
    held = [f.signal for f in metrics.NVIDIA_SMI_PMON_METRICS if f.name in table.columns]
    raise MalformedCapture(
        f"{path}:{table.line}: nvidia-smi pmon output holding {_held([dict.fromkeys(held, 0.0)])} of "
        "processes, no utilization or activity signal: record with -s u added (e.g. -s um), "
        "which gives the sm column"
    )


# --- -q and -q -x: snapshots of GPU blocks ---------------------------------------------------------


@dataclass
class _Device:
    """A GPU (or MIG device) block of a -q snapshot: its values by path, each with its line."""

    line: int
    bus_id: str | None
    values: dict[str, tuple[str, int]] = field(default_factory=dict)
    migs: list[_Device] = field(default_factory=list)

    def text(self, key: str) -> str | None:
        found = self.values.get(key)
        return None if found is None or _is_missing(found[0]) else found[0].strip()


@dataclass
class _Snapshot:
    line: int
    xml: bool
    timestamp: tuple[str, int] | None = None
    attached: str | None = None
    gpus: list[_Device] = field(default_factory=list)


_QUERY_KEY = re.compile(r"(\S.*?)\s*:\s?(.*)")
_QUERY_MIG_DEVICE = "MIG Device"


def _query_text(lines: Sequence[str]) -> list[_Snapshot]:
    snapshots: list[_Snapshot] = []
    gpu: _Device | None = None
    # Open sections: (indent, title, the MIG device it opens or None).
    stack: list[tuple[int, str, _Device | None]] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if _QUERY_BANNER.fullmatch(stripped):
            snapshots.append(_Snapshot(number, xml=False))
            gpu = None
            continue
        gpu_match = _QUERY_GPU.fullmatch(stripped) if indent == 0 else None
        key = _QUERY_KEY.fullmatch(stripped)
        if indent == 0:
            gpu, stack = None, []
            if gpu_match is not None:
                if not snapshots:
                    snapshots.append(_Snapshot(number, xml=False))
                gpu = _Device(number, gpu_match.group(1))
                snapshots[-1].gpus.append(gpu)
            elif key is not None:
                name, value = key.group(1), key.group(2)
                starts = name == metrics.NVIDIA_SMI_QUERY_TIMESTAMP[0] and (
                    not snapshots or snapshots[-1].timestamp is not None or snapshots[-1].gpus
                )
                if not snapshots or starts:  # a log of `nvidia-smi -q -l` whose banners were cut
                    snapshots.append(_Snapshot(number, xml=False))
                if name == metrics.NVIDIA_SMI_QUERY_TIMESTAMP[0]:
                    snapshots[-1].timestamp = (value.strip(), number)
                elif name == metrics.NVIDIA_SMI_QUERY_ATTACHED[0]:
                    snapshots[-1].attached = value.strip()
            continue
        if gpu is None:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if key is None:
            mig = _Device(number, None) if stripped == _QUERY_MIG_DEVICE else None
            if mig is not None:
                gpu.migs.append(mig)
            stack.append((indent, stripped, mig))
            continue
        owner, titles = gpu, list[str]()
        for _, title, mig in stack:
            if mig is not None:
                owner, titles = mig, []
            else:
                titles.append(title)
        owner.values.setdefault("/".join([*titles, key.group(1)]), (key.group(2), number))
    return snapshots


_XML_ENTITY = "<!ENTITY"
_XML_ROOT_END = "</nvidia_smi_log>"
_XML_PROCESSES = "processes"
_XML_MIG_DEVICES = "mig_devices"
_XML_MIG_DEVICE = "mig_device"


def _query_xml(path: Path, lines: Sequence[str]) -> list[_Snapshot]:
    """The snapshots of a -q -x output: one XML document, or several (``-l``) each from its ``<?xml``."""
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("<?xml")] or [0]
    starts[0] = 0
    snapshots = []
    for begin, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        document = lines[begin:end]
        for offset, line in enumerate(document):
            if _XML_ENTITY in line:
                raise MalformedCapture(
                    f"{path}:{begin + offset + 1}: an XML entity declaration, which nvidia-smi never "
                    "writes: not nvidia-smi -q -x output as it printed it"
                )
        try:
            root = ET.fromstring("\n".join(document))  # expat loads no external DTD
        except ET.ParseError as exc:
            line_in, _ = exc.position
            cut = line_in >= len(document) and _XML_ROOT_END not in "\n".join(document)
            what = (
                f"ends at line {begin + len(document)} before its closing {_XML_ROOT_END} (cut short)"
                if cut
                else f"is not well-formed ({one_line(exc)})"
            )
            raise MalformedCapture(
                f"{path}:{begin + line_in}: nvidia-smi -q -x XML that {what}: save the output whole"
            ) from None
        if root.tag != "nvidia_smi_log":
            raise MalformedCapture(
                f"{path}:{begin + 1}: XML whose root is <{root.tag}>, not nvidia-smi's <nvidia_smi_log>"
            )
        lines_of = _TagLines(document, begin)
        snapshot = _Snapshot(begin + 1, xml=True)
        for child in root:
            if child.tag == metrics.NVIDIA_SMI_QUERY_TIMESTAMP[1]:
                snapshot.timestamp = ((child.text or "").strip(), lines_of.find(child.tag))
            elif child.tag == metrics.NVIDIA_SMI_QUERY_ATTACHED[1]:
                snapshot.attached = (child.text or "").strip()
            elif child.tag == "gpu":
                gpu = _Device(lines_of.find(child.tag), child.get("id"))
                _flatten(child, [], gpu, lines_of)
                snapshot.gpus.append(gpu)
        snapshots.append(snapshot)
    return snapshots


@dataclass
class _TagLines:
    """The file line of each element, found walking the document in order (ElementTree keeps none)."""

    document: Sequence[str]
    begin: int  # the file line before the document's first
    line: int = 0  # where the last element found opens: index in document, column
    column: int = 0

    def find(self, tag: str) -> int:
        opening = re.compile(rf"<{re.escape(tag)}[\s/>]")
        for index in range(self.line, len(self.document)):
            found = opening.search(self.document[index], self.column if index == self.line else 0)
            if found is not None:
                self.line, self.column = index, found.end()
                return self.begin + index + 1
        return self.begin + self.line + 1


def _flatten(element: ET.Element, tags: list[str], device: _Device, lines_of: _TagLines) -> None:
    """Record the leaves under ``element`` in ``device`` by their path of tags; MIG devices apart."""
    for child in element:
        if child.tag == _XML_PROCESSES:
            continue
        if child.tag == _XML_MIG_DEVICES:
            lines_of.find(child.tag)
            for mig_element in child.iter(_XML_MIG_DEVICE):
                mig = _Device(lines_of.find(mig_element.tag), None)
                _flatten(mig_element, [], mig, lines_of)
                device.migs.append(mig)
            continue
        path = [*tags, child.tag]
        line = lines_of.find(child.tag)
        if len(child):
            _flatten(child, path, device, lines_of)
        else:
            device.values.setdefault("/".join(path), ((child.text or "").strip(), line))


def _query_number(path: Path, line: int, what: str, text: str, unit: str) -> float:
    """A -q value such as ``45 %`` or ``16925 MiB`` in ``unit``; NaN for N/A and the like."""
    if _is_missing(text):
        return math.nan
    match = _NUMBER_WITH_UNIT.fullmatch(text.strip())
    if match is None:
        raise MalformedCapture(
            f"{path}:{line}: {what} value {one_line(repr(text))} is not a number: "
            "the output is damaged; record it again"
        )
    if match.group(2) is not None and match.group(2) != unit:
        raise MalformedCapture(
            f"{path}:{line}: {what} value {one_line(repr(text))} is in {match.group(2)}, expected {unit}"
        )
    return float(match.group(1))


def _query_signals(
    path: Path, device: _Device, table: Sequence[metrics.NvidiaSmiQueryField], xml: bool
) -> dict[str, float]:
    """The signals of ``device``: for each, the first field of ``table`` with a value."""
    signals: dict[str, float] = {}
    for known in table:
        key = known.xml_path if xml else known.text_path
        if key not in device.values or not math.isnan(signals.get(known.signal, math.nan)):
            continue
        text, line = device.values[key]
        signals[known.signal] = _query_number(path, line, key, text, known.unit) * known.scale
    return signals


def _query_time(path: Path, stamp: tuple[str, int]) -> datetime | None:
    text, line = stamp
    try:
        when = datetime.strptime(" ".join(text.split()), metrics.NVIDIA_SMI_QUERY_TIMESTAMP_FORMAT)
    except ValueError:
        raise MalformedCapture(
            f"{path}:{line}: Timestamp {one_line(repr(text))} is not like 'Fri Jul  3 22:22:26 2026' "
            "(nvidia-smi in the C locale)"
        ) from None
    when = when.replace(tzinfo=UTC)
    return when if in_time_span(when) else None


def _gpu_ids(snapshot: _Snapshot) -> tuple[list[str], str | None]:
    """Each GPU's id: its place in the output (nvidia-smi's index) where it shows every attached GPU,
    else its minor number or bus id; and a note where not the index."""
    xml = snapshot.xml
    counted = snapshot.attached is not None and _is_count(snapshot.attached)
    if not counted or int(snapshot.attached or 0) == len(snapshot.gpus):
        return [str(i) for i in range(len(snapshot.gpus))], None
    ids: list[str] = []
    for gpu in snapshot.gpus:
        minor = gpu.text(metrics.NVIDIA_SMI_QUERY_MINOR[1 if xml else 0])
        ids.append(minor if minor is not None and _is_count(minor) else (gpu.bus_id or str(len(ids))))
    return ids, (
        f"the output shows {len(snapshot.gpus)} of {snapshot.attached} attached GPUs (nvidia-smi -i): "
        "GPUs named by minor number (else PCI bus id), not index"
    )


def _parse_query(path: Path, snapshots: list[_Snapshot], clock: Clock, source_format: str) -> Parsed:
    snapshots = [s for s in snapshots if s.gpus]
    if not snapshots:
        raise MalformedCapture(
            f"{path}:1: {source_format} output without a GPU block ('GPU 00000000:xx:00.0' or <gpu>): "
            "save the whole output"
        )
    rows: list[Row] = []
    numbers: list[int] = []
    row_snapshots: list[int] = []
    notes: list[str] = []
    empty: list[str] = []
    shared_instances = 0
    migs = 0
    missing_ids = 0
    for index, snapshot in enumerate(snapshots):
        xml = snapshot.xml
        when = _query_time(path, snapshot.timestamp) if snapshot.timestamp is not None else None
        ids, id_note = _gpu_ids(snapshot)
        if id_note and id_note not in notes:
            notes.append(id_note)
        for gpu_id, gpu in zip(ids, snapshot.gpus, strict=True):
            model = gpu.text(metrics.NVIDIA_SMI_QUERY_MODEL[1 if xml else 0])
            devices = [(gpu_id, gpu, metrics.NVIDIA_SMI_QUERY_METRICS)]
            instances: set[str] = set()
            for mig in gpu.migs:
                instance = mig.text(metrics.NVIDIA_SMI_QUERY_MIG_INSTANCE[1 if xml else 0])
                if instance is None:
                    missing_ids += 1
                    continue
                if instance in instances:  # compute instances of one GPU instance: its memory, once
                    shared_instances += 1
                    continue
                instances.add(instance)
                devices.append((mig_gpu(gpu_id, instance), mig, metrics.NVIDIA_SMI_QUERY_MIG_METRICS))
            for device_id, device, table in devices:
                signals = _query_signals(path, device, table, xml)
                if all(math.isnan(v) for v in signals.values()):
                    empty.append(device_id)
                    continue
                migs += device is not gpu
                rows.append({TIMESTAMP: when, GPU: device_id, GPU_MODEL: model, **signals})
                numbers.append(device.line)
                row_snapshots.append(index)
    if not _has_utilization(rows):
        _refuse_query(path, snapshots, rows, source_format)
    untimed = sorted({k for k in row_snapshots if snapshots[k].timestamp is None})
    if untimed:
        placed, how = clock.times(
            len(untimed), LOOP_INTERVAL_SECONDS, f"{len(untimed)} snapshot(s) without a Timestamp"
        )
        at = dict(zip(untimed, placed, strict=True))
        for row, k in zip(rows, row_snapshots, strict=True):
            if k in at:
                row[TIMESTAMP] = at[k]
        notes.append(how)
    if len(untimed) < len(snapshots):
        notes.append(LOCAL_TIME_NOTE)
    notes.insert(0, f"{len(snapshots)} {source_format} snapshot(s) read, {len(rows)} device row(s)")
    if migs:
        notes.append(
            f"{migs} MIG device row(s) ('<gpu>/<GPU instance>') with memory only: nvidia-smi reports no "
            "utilization or power per MIG device"
        )
    if shared_instances:
        notes.append(
            f"{shared_instances} further compute instance(s) of a GPU instance skipped: they share its memory"
        )
    if missing_ids:
        notes.append(f"{missing_ids} MIG device(s) without a GPU Instance ID skipped")
    if empty:
        notes.append(f"device(s) without any signal zest reads skipped: {', '.join(empty[:8])}")
    return Parsed(rows, notes, source_format, numbers)


def _refuse_query(path: Path, snapshots: list[_Snapshot], rows: list[Row], source_format: str) -> None:
    first = snapshots[0].gpus[0]
    xml = snapshots[0].xml
    utilization = metrics.NVIDIA_SMI_QUERY_METRICS[0]
    key = utilization.xml_path if xml else utilization.text_path
    has_section = any(key in gpu.values for s in snapshots for gpu in s.gpus)
    mig = any(gpu.migs for s in snapshots for gpu in s.gpus)
    reason = (
        f"{key} is N/A in every GPU block"
        if has_section
        else f"no {key} in any GPU block: the output is cut short or was trimmed"
    )
    if mig:
        reason += "; nvidia-smi reports none per MIG device"
        advice = "record dcgm-exporter or dcgmi dmon (DCGM_FI_PROF_GR_ENGINE_ACTIVE) instead"
    else:
        advice = "save the whole output, or log nvidia-smi --query-gpu with utilization.gpu"
    ids = sorted({str(row[GPU]) for row in rows})
    of = f" of GPU(s) {', '.join(ids[:8])}" if ids else ""
    raise MalformedCapture(
        f"{path}:{first.line}: {source_format} output holding {_held(rows)}{of}, no utilization or "
        f"activity signal ({reason}): {advice}"
    )
