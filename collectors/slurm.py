"""What Slurm knows about a job: its GPUs, time limit and run, asked of the scheduler's own commands.

:class:`Slurm` resolves a job id with ``scontrol -d -o show job ID`` (one line
per job; ``-d`` adds each node's GRES with the GPU indices, e.g.
``GRES=gpu:2(IDX:0-1)``, while the job runs). A job the controller has already
forgotten (``MinJobAge`` after it ended) is looked up in accounting with
``sacct -X -n -P`` where slurmdbd runs; ``sacct`` also counts a user's earlier
jobs of the same name (:meth:`Slurm.reuse_from_history`). ``squeue`` is not
asked: it reads the same controller records as ``scontrol`` and shows no GPU
indices. ``sacct --json`` is not used either: its schema changes with every
Slurm release (``dbv0.0.38`` in 22.05), the ``-P`` columns do not.

Slurm prints times in the local time zone of the command, without a zone
suffix; they are read as local time (the ``TZ`` of this process, or the
``local_tz`` given) and returned as UTC datetimes.

:func:`defaults_from_slurm` turns a :class:`SlurmJob` into the estimator's
defaults (G, T, the telemetry window, the nodes and this node's GPU indices),
each with a note naming its origin. Commands run through an injected
:data:`Runner`; :func:`subprocess_runner` is the real one.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from collectors.errors import (
    SlurmAccountingUnavailable,
    SlurmJobNotFound,
    SlurmPermissionDenied,
    SlurmQueryError,
    SlurmUnavailable,
)
from collectors.util import iso_utc, one_line, short_host

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
"""Runs one command (argv) and returns its exit status, stdout and stderr as text."""

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_HISTORY_DAYS = 90
INSTALL_HINT = "run it on a Slurm login or compute node, or install the client: apt-get install slurm-client"

# A job id, an array task (123_4) or a heterogeneous job component (123+1); never an option.
_JOB_ID = re.compile(r"^\d+(?:[_+]\d+)?$")
# In `scontrol -o` output a field is " Key=value"; keys look like AllocNode:Sid, CPUs/Task, ReqB:S:C:T.
_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][\w:/.]*)=")
_NULL_TEXT = frozenset({"", "(null)", "None", "Unknown", "N/A", "None assigned"})
_UNLIMITED = frozenset({"UNLIMITED", "Partition_Limit", "NONE", "INVALID"})
# Job states after which the run time is final (Slurm's "job state codes"); COMPLETING has an end time.
_ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
_NOT_STARTED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
_ACCESS_DENIED = "Access/permission denied"
_INVALID_JOB_ID = "Invalid job id specified"


def is_slurm_job_id(job_id: str) -> bool:
    """Whether ``job_id`` has the shape of a Slurm job id (``1234``, ``1234_5``, ``1234+1``)."""
    return bool(_JOB_ID.match(job_id.strip()))


_ACCOUNTING_DISABLED = "accounting storage is disabled"

# JobName is last so that a "|" in a job name cannot shift the other columns.
SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "State",
    "User",
    "Partition",
    "NodeList",
    "AllocTRES",
    "TimelimitRaw",
    "Start",
    "End",
    "ElapsedRaw",
    "JobName",
)


@dataclass(frozen=True)
class NodeGpus:
    """The GPUs a job holds on one node; indices are empty where Slurm did not say (job not running)."""

    node: str
    count: int
    indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class SlurmJob:
    """A Slurm job as the scheduler describes it; datetimes are UTC.

    ``gpus_per_node`` lists the nodes with GPUs; ``gres`` is how the GPUs were
    stated (``"gpu:2"``), for notes. ``end_time`` of a job still running is the
    time its limit ends it; ``start_time`` of a pending job is None (Slurm's
    value is only a forecast). ``source`` is the command that described it.
    """

    job_id: str
    state: str
    name: str
    user: str
    partition: str
    nodes: tuple[str, ...]
    gpus_per_node: tuple[NodeGpus, ...]
    gpus: int
    gres: str
    time_limit_hours: float | None
    start_time: datetime | None
    run_time_seconds: float
    end_time: datetime | None
    source: str

    @property
    def ended(self) -> bool:
        """True once the job's run is over (completed, failed, cancelled, timed out, ...)."""
        return self.state in _ENDED_STATES

    @property
    def started(self) -> bool:
        return self.start_time is not None and self.state not in _NOT_STARTED_STATES

    def gpu_indices_on(self, node: str) -> tuple[int, ...] | None:
        """This job's GPU indices on ``node`` (short names compared); None if the node is not the job's
        or Slurm gave no indices."""
        short = short_host(node)
        for entry in self.gpus_per_node:
            if short_host(entry.node) == short:
                return entry.indices or None
        return None


@dataclass(frozen=True)
class ReuseCount:
    """How many earlier jobs of the same user and name ran within the last ``days`` days."""

    count: int
    days: int

    @property
    def runs(self) -> float:
        """R, the runs the break-even counts: a job never seen before is one run."""
        return float(max(self.count, 1))

    @property
    def note(self) -> str:
        return f"R = {self.count} from Slurm accounting: seen {self.count} times in {self.days} days"


@dataclass(frozen=True)
class SacctJob:
    """One allocation line of ``sacct -X -P -o`` :data:`SACCT_FIELDS`; datetimes are UTC."""

    job_id: str
    state: str
    user: str
    partition: str
    node_list: str
    alloc_tres: str
    time_limit_minutes: int | None
    start_time: datetime | None
    end_time: datetime | None
    elapsed_seconds: int
    name: str


@dataclass(frozen=True)
class SlurmDefaults:
    """Estimator inputs drawn from a Slurm job; None where the job does not tell.

    ``notes`` holds one line per field that has a value (keys are the field
    names), stating its origin; a caller drops the note of a field it overrides.
    ``window_start``/``window_end`` (UTC) bound the telemetry to read;
    ``local_gpu_indices`` are the job's GPUs on this host, for the NVML source.
    """

    gpus: int | None
    duration_hours: float | None
    window_start: datetime | None
    window_end: datetime | None
    nodes: tuple[str, ...]
    local_gpu_indices: tuple[int, ...] | None
    notes: Mapping[str, str] = field(default_factory=dict)


def subprocess_runner(
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, env: Mapping[str, str] | None = None
) -> Runner:
    """A :data:`Runner` that executes the command, killing it after ``timeout_seconds``.

    ``env`` replaces the environment (e.g. one with ``SLURM_CONF``); None inherits this process'.
    Raises what :func:`subprocess.run` raises: ``FileNotFoundError``, ``subprocess.TimeoutExpired``.
    """

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout_seconds,
            check=False,
            env=None if env is None else dict(env),
        )

    return run


class Slurm:
    """Asks Slurm's commands about jobs through ``runner`` (default: run them here)."""

    def __init__(self, runner: Runner | None = None, *, local_tz: tzinfo | None = None) -> None:
        self.runner = runner if runner is not None else subprocess_runner()
        self.local_tz = local_tz

    def job(self, job_id: str) -> SlurmJob:
        """The job ``job_id``, from the controller, else from accounting.

        Raises :class:`SlurmJobNotFound`, :class:`SlurmUnavailable`, :class:`SlurmQueryError`,
        :class:`SlurmPermissionDenied`.
        """
        job_id = job_id.strip()
        if not _JOB_ID.match(job_id):
            raise SlurmJobNotFound(
                f"{job_id!r} is not a Slurm job id: give the number squeue shows (e.g. 1234 or 1234_5)"
            )
        done = self._run(["scontrol", "-d", "-o", "show", "job", job_id], job_query=True)
        if done.returncode == 0:
            return parse_scontrol_job(done.stdout, job_id, expand=self.hostnames, local_tz=self.local_tz)
        try:
            rows = self.sacct(["-j", job_id])
        except SlurmAccountingUnavailable:
            raise SlurmJobNotFound(
                f"Slurm knows no job {job_id}: the controller does not have it and accounting (sacct) "
                "is off; check the id with squeue"
            ) from None
        row = next((r for r in rows if r.job_id == job_id), rows[0] if rows else None)
        if row is None:
            raise SlurmJobNotFound(f"Slurm knows no job {job_id}: check the id with squeue or sacct")
        return job_from_sacct(row, expand=self.hostnames)

    def batch_script(self, job_id: str) -> str:
        """The batch script job ``job_id`` was submitted with (``scontrol write batch_script ID -``).

        Raises :class:`SlurmJobNotFound` (unknown id, or a job the controller no longer holds),
        :class:`SlurmUnavailable`, :class:`SlurmQueryError`, :class:`SlurmPermissionDenied`.
        """
        job_id = job_id.strip()
        if not _JOB_ID.match(job_id):
            raise SlurmJobNotFound(
                f"{job_id!r} is not a Slurm job id: give the number squeue shows (e.g. 1234 or 1234_5)"
            )
        done = self._run(["scontrol", "write", "batch_script", job_id, "-"], job_query=True)
        if done.returncode != 0 or not done.stdout.strip():
            raise SlurmJobNotFound(
                f"Slurm has no batch script of job {job_id}: an unknown id, a job no longer held by the "
                "controller, or one started with srun (no script); give the command line with --megatron-args"
            )
        return done.stdout

    def hostnames(self, hostlist: str) -> tuple[str, ...]:
        """The host names of a hostlist (``node[01-03],gpu7``), expanded by ``scontrol show hostnames``."""
        if hostlist in _NULL_TEXT:
            return ()
        if "[" not in hostlist:
            return tuple(h for h in hostlist.split(",") if h)
        done = self._run(["scontrol", "show", "hostnames", hostlist])
        return tuple(line.strip() for line in done.stdout.splitlines() if line.strip())

    def sacct(self, selection: Sequence[str]) -> list[SacctJob]:
        """Allocation lines (``-X``) of ``sacct`` for ``selection`` (e.g. ``["-j", "42"]``).

        Raises :class:`SlurmAccountingUnavailable` where Slurm runs without accounting.
        """
        argv = ["sacct", *selection, "-X", "-n", "-P", "-o", ",".join(SACCT_FIELDS)]
        done = self._run(argv)
        return parse_sacct(done.stdout, local_tz=self.local_tz)

    def reuse_from_history(
        self, user: str, name: str, days: int = DEFAULT_HISTORY_DAYS, *, exclude_job_id: str | None = None
    ) -> ReuseCount:
        """How many jobs ``user`` ran under the name ``name`` in the last ``days`` days, from ``sacct``.

        Jobs that never started and ``exclude_job_id`` (the job being estimated, with its array
        siblings) are not counted. Raises :class:`SlurmAccountingUnavailable` without accounting.
        """
        rows = self.sacct(["-u", user, "--name", name, "-S", f"now-{days}days", "-E", "now"])
        count = count_reuse(rows, user=user, name=name, exclude_job_id=exclude_job_id)
        return ReuseCount(count=count, days=days)

    def _run(self, argv: list[str], *, job_query: bool = False) -> subprocess.CompletedProcess[str]:
        """Runs a Slurm command and returns its result if it succeeded, or, for a ``job_query``, if the
        only trouble is an unknown job id; raises the project's error for anything else."""
        command = " ".join([argv[0], *[word for word in argv[1:] if not word.startswith("-")][:2]])
        command = command if argv[0] == "scontrol" else argv[0]  # "scontrol show job", "sacct"
        try:
            done = self.runner(argv)
        except FileNotFoundError:
            raise SlurmUnavailable(f"Slurm's {argv[0]} is not installed here: {INSTALL_HINT}") from None
        except PermissionError:
            raise SlurmUnavailable(f"Slurm's {argv[0]} cannot be executed here: {INSTALL_HINT}") from None
        except subprocess.TimeoutExpired as exc:
            raise SlurmQueryError(
                f"{command} gave no answer within {exc.timeout:g} s: is slurmctld up? check with sinfo"
            ) from None
        if done.returncode == 0:
            return done
        message = one_line(done.stderr or done.stdout) or f"exit status {done.returncode}"
        if _ACCESS_DENIED.lower() in message.lower():
            raise SlurmPermissionDenied(
                f"Slurm denied {command}: {message}; ask for the job as its owner or an operator"
            )
        if job_query and _INVALID_JOB_ID.lower() in message.lower():
            return done
        if _ACCOUNTING_DISABLED in message.lower():
            raise SlurmAccountingUnavailable(
                f"Slurm accounting is off here ({message}): sacct has no history; give the value explicitly"
            )
        raise SlurmQueryError(f"{command} failed (exit {done.returncode}): {message}")


def parse_scontrol_job(
    text: str,
    job_id: str,
    *,
    expand: Callable[[str], tuple[str, ...]],
    local_tz: tzinfo | None = None,
) -> SlurmJob:
    """The job ``job_id`` from ``scontrol -d -o show job`` output (one line per job; an array gives several).

    ``expand`` turns a hostlist into host names. Raises :class:`SlurmJobNotFound` if no line is the job,
    :class:`SlurmQueryError` if the line lacks the job's state.
    """
    lines = [line for line in text.splitlines() if line.startswith("JobId=")]
    line = next((ln for ln in lines if _scontrol_job_ids(_pairs(ln)) & {job_id}), lines[0] if lines else None)
    if line is None:
        raise SlurmJobNotFound(
            f"Slurm knows no job {job_id}: scontrol printed none; check the id with squeue"
        )
    pairs = _pairs(line)
    fields = dict(pairs)  # the last of repeated per-node keys wins; those are read from `pairs`
    state = fields.get("JobState", "")
    if not state:
        raise SlurmQueryError(f"scontrol show job {job_id} printed no JobState: {one_line(line, 200)}")
    array_job, array_task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
    shown_id = f"{array_job}_{array_task}" if array_job and array_task else fields.get("JobId", job_id)

    per_node = _per_node_gpus(pairs, expand)
    nodes = expand(fields.get("NodeList", ""))
    gres = fields.get("JOB_GRES", "")
    if any(entry.indices for entry in per_node):
        gpus = sum(entry.count for entry in per_node)
        gres = gres if gres not in _NULL_TEXT else ",".join(f"gpu:{e.count}" for e in per_node)
    else:
        gpus, gres = _gpus_without_indices(fields)
        per_node = _spread(gpus, nodes)

    started = state not in _NOT_STARTED_STATES
    return SlurmJob(
        job_id=shown_id,
        state=state,
        name=_job_name(line, fields),
        user=_user_name(fields.get("UserId", "")),
        partition=_text(fields.get("Partition", "")),
        nodes=nodes,
        gpus_per_node=per_node,
        gpus=gpus,
        gres=gres,
        time_limit_hours=_hours(parse_duration_seconds(fields.get("TimeLimit", ""))),
        start_time=parse_local_time(fields.get("StartTime", ""), local_tz) if started else None,
        run_time_seconds=float(parse_duration_seconds(fields.get("RunTime", "")) or 0),
        end_time=parse_local_time(fields.get("EndTime", ""), local_tz) if started else None,
        source="scontrol",
    )


def parse_sacct(text: str, *, local_tz: tzinfo | None = None) -> list[SacctJob]:
    """Lines of ``sacct -n -P -o`` :data:`SACCT_FIELDS` (``|``-separated, JobName last)."""
    rows: list[SacctJob] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = line.split("|", len(SACCT_FIELDS) - 1)
        if len(cells) != len(SACCT_FIELDS):
            raise SlurmQueryError(
                f"sacct printed {len(cells)} columns, expected {len(SACCT_FIELDS)}: {one_line(line, 200)}"
            )
        row = dict(zip(SACCT_FIELDS, cells, strict=True))
        limit = row["TimelimitRaw"]
        rows.append(
            SacctJob(
                job_id=row["JobID"],
                state=row["State"].split(" ")[0],  # "CANCELLED by 1000"
                user=row["User"],
                partition=row["Partition"],
                node_list=row["NodeList"],
                alloc_tres=row["AllocTRES"],
                time_limit_minutes=int(limit) if limit.isdigit() else None,
                start_time=parse_local_time(row["Start"], local_tz),
                end_time=parse_local_time(row["End"], local_tz),
                elapsed_seconds=int(row["ElapsedRaw"]) if row["ElapsedRaw"].isdigit() else 0,
                name=row["JobName"],
            )
        )
    return rows


def job_from_sacct(row: SacctJob, *, expand: Callable[[str], tuple[str, ...]]) -> SlurmJob:
    """A :class:`SlurmJob` from its accounting line; accounting keeps no GPU indices."""
    nodes = expand(row.node_list)
    gpus = _tres_gpus(row.alloc_tres) or 0
    started = row.state not in _NOT_STARTED_STATES
    return SlurmJob(
        job_id=row.job_id,
        state=row.state,
        name=row.name,
        user=row.user,
        partition=row.partition,
        nodes=nodes,
        gpus_per_node=_spread(gpus, nodes),
        gpus=gpus,
        gres=f"gres/gpu={gpus}" if gpus else "",
        time_limit_hours=None if row.time_limit_minutes is None else row.time_limit_minutes / 60.0,
        start_time=row.start_time if started else None,
        run_time_seconds=float(row.elapsed_seconds),
        end_time=row.end_time if started else None,
        source="sacct",
    )


def count_reuse(rows: Sequence[SacctJob], *, user: str, name: str, exclude_job_id: str | None = None) -> int:
    """Jobs among ``rows`` of ``user`` named exactly ``name`` that started, other than ``exclude_job_id``."""
    excluded = _array_base(exclude_job_id) if exclude_job_id else None
    return sum(
        1
        for row in rows
        if row.user == user
        and row.name == name
        and row.start_time is not None
        and row.state not in _NOT_STARTED_STATES
        and (excluded is None or _array_base(row.job_id) != excluded)
    )


def defaults_from_slurm(job: SlurmJob, now: datetime, *, hostname: str | None = None) -> SlurmDefaults:
    """The estimator defaults the job gives, each with its origin in ``notes``.

    G is the job's GPUs; T its time limit while it runs (its run time once
    ended); the window its run so far (``now``, UTC) or its whole run; the GPU
    indices are those on ``hostname`` (default: this host). A pending job gives
    no window; a job with no GPUs gives no G.
    """
    where = f"Slurm job {job.job_id}"
    notes: dict[str, str] = {}
    gpus = job.gpus or None
    if gpus is not None:
        notes["gpus"] = f"G = {gpus} GPUs from {where} (gres {job.gres})"

    duration_hours: float | None = None
    if job.ended and job.started:
        duration_hours = job.run_time_seconds / 3600.0
        notes["duration_hours"] = (
            f"T = {duration_hours:.4g} h from {where}: its run time, ended {job.state}{_when(job.end_time)}"
        )
    elif not job.ended:
        duration_hours = job.time_limit_hours
        if duration_hours is not None:
            notes["duration_hours"] = f"T = {duration_hours:.4g} h from {where}: its time limit"

    window_start = job.start_time if job.started else None
    window_end: datetime | None = None
    if window_start is not None:
        window_end = job.end_time if job.ended and job.end_time is not None else now.astimezone(UTC)
        span = "its whole run" if job.ended else f"its run so far ({job.state})"
        window = f"{iso_utc(window_start)} to {iso_utc(window_end)}"
        notes["window"] = f"telemetry window {window} from {where}: {span}"

    if job.nodes:
        notes["nodes"] = f"nodes {','.join(job.nodes)} from {where}"

    host = hostname if hostname is not None else socket.gethostname()
    local = job.gpu_indices_on(host)
    if local is not None:
        notes["local_gpu_indices"] = (
            f"GPU indices {','.join(map(str, local))} on {short_host(host)} from {where} (gres IDX)"
        )
    return SlurmDefaults(
        gpus=gpus,
        duration_hours=duration_hours,
        window_start=window_start,
        window_end=window_end,
        nodes=job.nodes,
        local_gpu_indices=local,
        notes=notes,
    )


def parse_duration_seconds(text: str) -> int | None:
    """Seconds in a Slurm duration (``[D-]HH:MM:SS``, ``MM:SS``); None for UNLIMITED and the like."""
    text = text.strip()
    if text in _UNLIMITED or text in _NULL_TEXT:
        return None
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not (days == "" or days.isdigit()) or not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        raise SlurmQueryError(f"Slurm printed a duration zest cannot read: {text!r}")
    numbers = [0] * (3 - len(parts)) + [int(p) for p in parts]
    if len(parts) == 1:  # a bare number is minutes in Slurm's time formats
        numbers = [0, int(parts[0]), 0]
    hours, minutes, seconds = numbers
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_local_time(text: str, local_tz: tzinfo | None = None) -> datetime | None:
    """A Slurm timestamp (local time, no zone: ``2024-03-01T09:15:57``) as UTC; None for Unknown/None.

    ``local_tz`` None means this process' local time zone (``TZ``), which is also the commands'.
    """
    text = text.strip()
    if text in _NULL_TEXT:
        return None
    try:
        naive = datetime.fromisoformat(text)
    except ValueError:
        raise SlurmQueryError(f"Slurm printed a time zest cannot read: {text!r}") from None
    local = naive.astimezone() if local_tz is None else naive.replace(tzinfo=local_tz)
    return local.astimezone(UTC)


def parse_gres(text: str) -> list[tuple[str | None, int, tuple[int, ...]]]:
    """The GPU entries of a GRES text as (type, count, indices).

    Reads ``gpu:2``, ``gpu:a100:2(IDX:0,2)``, ``gres:gpu:2`` (TresPerNode) and ``gpu(IDX:0-1)``
    (older ``GRES_IDX``, count = indices); other GRES (``nic:1``) are ignored.
    """
    entries: list[tuple[str | None, int, tuple[int, ...]]] = []
    for item in _split_top_level(text):
        head, _, detail = item.partition("(")
        parts = head.strip().split(":")
        if parts and parts[0] == "gres":
            parts = parts[1:]
        if not parts or parts[0] != "gpu":
            continue
        indices = _indices(detail.rstrip(")"))
        count_text = parts[-1] if len(parts) > 1 else ""
        kind = parts[1] if len(parts) > 2 or (len(parts) == 2 and not count_text.isdigit()) else None
        count = int(count_text) if count_text.isdigit() else len(indices)
        entries.append((kind, count, indices))
    return entries


def _per_node_gpus(
    pairs: Sequence[tuple[str, str]], expand: Callable[[str], tuple[str, ...]]
) -> tuple[NodeGpus, ...]:
    """The ``-d`` groups ``Nodes=… CPU_IDs=… Mem=… GRES=gpu:2(IDX:0-1)``, one group per set of nodes."""
    groups: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == "Nodes":
            groups.append((value, ""))
        elif key in ("GRES", "GRES_IDX") and groups:
            groups[-1] = (groups[-1][0], value)
    result: list[NodeGpus] = []
    for hostlist, gres in groups:
        entries = parse_gres(gres)
        if not entries:
            continue
        count = sum(count for _, count, _ in entries)
        indices = tuple(sorted({i for _, _, idx in entries for i in idx}))
        result.extend(NodeGpus(node=node, count=count, indices=indices) for node in expand(hostlist))
    return tuple(result)


def _gpus_without_indices(fields: Mapping[str, str]) -> tuple[int, str]:
    """The job's GPU count and how it was stated, where no node lists GPU indices (pending or ended)."""
    tres = _tres_gpus(fields.get("TRES", ""))
    if tres:
        return tres, f"gres/gpu={tres}"
    per_node_multiplier = _int(fields.get("NumNodes"))
    for key, multiplier in (("JOB_GRES", 1), ("TresPerJob", 1), ("TresPerNode", per_node_multiplier)):
        text = fields.get(key, "")
        count = sum(count for _, count, _ in parse_gres(text)) * multiplier
        if count:
            return count, text.removeprefix("gres:")
    return 0, ""


def _tres_gpus(tres: str) -> int | None:
    """The untyped ``gres/gpu=N`` of a TRES list (typed ``gres/gpu:a100=N`` repeat it)."""
    for item in tres.split(","):
        key, _, value = item.partition("=")
        if key == "gres/gpu" and value.isdigit():
            return int(value)
    return None


def _spread(gpus: int, nodes: tuple[str, ...]) -> tuple[NodeGpus, ...]:
    """GPUs per node without indices: an even share each, when the count divides evenly."""
    if not gpus or not nodes or gpus % len(nodes):
        return ()
    return tuple(NodeGpus(node=node, count=gpus // len(nodes)) for node in nodes)


def _pairs(line: str) -> list[tuple[str, str]]:
    """``Key=value`` fields of a ``scontrol -o`` line in order; a value runs to the next `` Key=``."""
    matches = list(_KEY.finditer(line))
    return [
        (m.group(1), line[m.end() : nxt.start() if nxt else len(line)].strip())
        for m, nxt in zip(matches, [*matches[1:], None], strict=True)
    ]


def _scontrol_job_ids(pairs: Sequence[tuple[str, str]]) -> set[str]:
    fields = dict(pairs)
    ids = {fields.get("JobId", "")}
    if fields.get("ArrayJobId") and fields.get("ArrayTaskId"):
        ids.add(f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}")
    return ids


def _job_name(line: str, fields: Mapping[str, str]) -> str:
    """JobName, which may hold spaces and ``=``: everything up to the `` UserId=`` that follows it."""
    match = re.search(r"(?:^|\s)JobName=(.*?) UserId=", line)
    return match.group(1) if match else fields.get("JobName", "")


def _user_name(text: str) -> str:
    """``root(0)`` -> ``root``."""
    return text.partition("(")[0]


def _text(value: str) -> str:
    return "" if value in _NULL_TEXT else value


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 1


def _hours(seconds: int | None) -> float | None:
    return None if seconds is None else seconds / 3600.0


def _indices(detail: str) -> tuple[int, ...]:
    """``IDX:0-1,3`` -> (0, 1, 3); anything else (``IDX:N/A``, ``S:0``) -> ()."""
    kind, _, ranges = detail.partition(":")
    if kind != "IDX":
        return ()
    result: list[int] = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (high == "" or high.isdigit()):
            result.extend(range(int(low), int(high or low) + 1))
    return tuple(result)


def _split_top_level(text: str) -> Iterator[str]:
    """Comma-separated items, ignoring commas inside parentheses (``gpu:2(IDX:0,2),nic:1``)."""
    depth, start = 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    if text[start:]:
        yield text[start:]


def _array_base(job_id: str) -> str:
    """``123_4`` -> ``123``: an array's tasks are one job for reuse counting."""
    return re.split(r"[_+.]", job_id, maxsplit=1)[0]


def _when(when: datetime | None) -> str:
    return "" if when is None else f" at {iso_utc(when)}"
