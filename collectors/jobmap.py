"""Which GPUs of this node belong to a job, from what schedulers and exporters leave on the node.

Evidence, first that names a GPU wins:

1. ``pid:<pid>`` — the GPUs whose processes are that pid or its descendants
   (parent links from ``/proc/<pid>/stat``);
2. dcgm-exporter's HPC job mapping directory (``--hpc-job-mapping-dir``):
   files named by GPU index ``<gpu>`` or ``<gpu>.<gpu instance>``, one job id
   per line; several lines mean a shared GPU;
3. Princeton jobstats' ``/run/gpustat``: files ``<ordinal>``, ``GPU-<uuid>``
   or ``MIG-<uuid>`` holding ``"<jobid> <uid>"``, written by the Slurm prolog;
4. the cgroups of the processes on each GPU (``/proc/<pid>/cgroup``): a Slurm
   job (``…/job_<id>/…``, cgroup v1 and v2) or a Kubernetes pod UID
   (``kubepods-…-pod<uid>.slice`` with the systemd driver,
   ``kubepods/…/pod<uid>/`` with cgroupfs).

A job id is ``pid:<pid>``, ``slurm:<id>``, ``pod:<uid>``, a bare pod UID, or
any other bare string (matched against mapping files and Slurm cgroups). Slurm
cgroups carry the raw job id: an array task ``1234_5`` is found only through
the mapping files.

GPU ids are ints for whole GPUs and ``"<gpu>/<instance>"`` for MIG instances,
as in the telemetry frame; a MIG UUID nothing maps stays a UUID string. This
module reads files only: the pids on each GPU come from the NVML source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from collectors.errors import JobNotFound
from collectors.schema import mig_gpu

GpuId = int | str

_UUID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
_POD_UID = re.compile(rf"^{_UUID}$")
# systemd driver: kubepods-burstable-pod<uid with _>.slice; cgroupfs: kubepods/burstable/pod<uid>/
_CGROUP_POD = re.compile(rf"(?:^|[/-])pod({_UUID})(?:\.slice)?(?:/|$)")
# v1 /slurm/uid_1000/job_1234/step_0; v2 /system.slice/slurmstepd.scope/job_1234/step_0/user/task_0
_CGROUP_SLURM_JOB = re.compile(r"/job_(\d+)(?:/|$)")
_DCGM_FILE = re.compile(r"^(\d+)(?:\.(\d+))?$")
_ORDINAL = re.compile(r"^\d+$")
_PID_ANCESTRY_LIMIT = 4096  # deeper than any real process tree; stops a cycle in a corrupt /proc


@dataclass(frozen=True)
class JobGpus:
    """The GPUs of a job on this node, how they were found, and which of them other jobs share."""

    gpu_indices: tuple[GpuId, ...]
    how: str
    shared: tuple[GpuId, ...] = ()


@dataclass(frozen=True)
class _Job:
    text: str  # as given
    kind: str  # "pid", "slurm", "pod" or "any"
    value: str  # pid, job id or normalised pod uid


def resolve_job_gpus(
    job_id: str,
    *,
    gpu_pids: Mapping[GpuId, Sequence[int]] | None = None,
    proc_root: Path = Path("/proc"),
    hpc_job_dir: Path | None = None,
    gpustat_dir: Path = Path("/run/gpustat"),
    gpu_uuids: Mapping[str, GpuId] | None = None,
) -> JobGpus:
    """Map ``job_id`` to GPU ids of this node; raise :class:`JobNotFound` when nothing maps.

    ``gpu_pids`` maps a GPU id (index, or "i/gi" for MIG) to the pids NVML
    sees on it; ``gpu_uuids`` maps a GPU or MIG UUID to its GPU id, for
    jobstats' UUID-named files. ``hpc_job_dir`` is the directory dcgm-exporter
    was started with (there is no default location); None skips it.
    """
    job = _parse(job_id)
    pids = gpu_pids or {}
    uuids = gpu_uuids or {}
    looked: list[str] = []

    if job.kind == "pid":
        looked.append(f"the processes on the GPUs under {proc_root}")
        found = _by_pid_ancestry(int(job.value), pids, proc_root)
        if found:
            return JobGpus(_ordered(found), f"process {job.value} or its children run on them")
        raise _not_found(job, looked)

    if job.kind in ("slurm", "any") and hpc_job_dir is not None:
        looked.append(str(hpc_job_dir))
        mapped, shared = _from_dcgm_mapping(job.value, hpc_job_dir)
        if mapped:
            return JobGpus(
                _ordered(mapped), f"dcgm-exporter job mapping files in {hpc_job_dir}", _ordered(shared)
            )

    if job.kind in ("slurm", "any"):
        looked.append(str(gpustat_dir))
        mapped = _from_gpustat(job.value, gpustat_dir, uuids)
        if mapped:
            return JobGpus(_ordered(mapped), f"jobstats files in {gpustat_dir}")

    if pids:
        looked.append(f"the cgroups of the processes on the GPUs under {proc_root}")
        mapped, shared = _from_cgroups(job, pids, proc_root)
        if mapped:
            what = "Kubernetes pod" if job.kind == "pod" else "Slurm job"
            return JobGpus(_ordered(mapped), f"{what} cgroups of the processes on them", _ordered(shared))

    raise _not_found(job, looked)


def _parse(job_id: str) -> _Job:
    text = job_id.strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix in ("pid", "slurm", "pod"):
        value = rest.strip()
        if prefix == "pid" and not value.isdigit():
            raise JobNotFound(f"job id {job_id!r}: a process id after 'pid:' must be a number")
        if prefix == "pod":
            value = _normalise_pod_uid(value)
        return _Job(text, prefix, value)
    if _POD_UID.match(text):
        return _Job(text, "pod", _normalise_pod_uid(text))
    return _Job(text, "any", text)


def _normalise_pod_uid(uid: str) -> str:
    return uid.lower().replace("_", "-")


def _not_found(job: _Job, looked: Sequence[str]) -> JobNotFound:
    where = "; ".join(looked) if looked else "nothing to look in (no mapping files, no GPU processes)"
    return JobNotFound(
        f"no GPU on this node belongs to job {job.text!r} (looked in: {where}); "
        "check the job id, run on the job's node, or select the GPUs explicitly"
    )


def _ordered(ids: Iterable[GpuId]) -> tuple[GpuId, ...]:
    def key(gpu: GpuId) -> tuple[int, int, int, str]:
        if isinstance(gpu, int):
            return (0, gpu, -1, "")
        index, slash, instance = gpu.partition("/")
        if slash and index.isdigit() and instance.isdigit():
            return (0, int(index), int(instance), "")
        return (1, 0, 0, gpu)

    return tuple(sorted(set(ids), key=key))


def _read_text(path: Path) -> str | None:
    # Prolog and epilog scripts create and remove these files while we read.
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
        return None


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.is_file())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def job_ids_on_node(
    gpu_pids: Mapping[GpuId, Sequence[int]],
    *,
    proc_root: Path = Path("/proc"),
    hpc_job_dir: Path | None = None,
    gpustat_dir: Path = Path("/run/gpustat"),
) -> set[str]:
    """Every job id named on this node: the Slurm jobs and pods (``pod:<uid>``) of the processes on the
    GPUs, and the jobs of the mapping files; :func:`resolve_job_gpus` finds each one's GPUs."""
    names: set[str] = set()
    for pids in gpu_pids.values():
        for pid in pids:
            owner = cgroup_owner(pid, proc_root)
            if owner is not None and owner.slurm_job is not None:
                names.add(owner.slurm_job)
            elif owner is not None and owner.pod_uid is not None:
                names.add(f"pod:{owner.pod_uid}")
    if hpc_job_dir is not None:
        for path in _entries(hpc_job_dir):
            content = _read_text(path) if _DCGM_FILE.match(path.name) else None
            names.update(line.strip() for line in (content or "").splitlines() if line.strip())
    for path in _entries(gpustat_dir):
        first = (_read_text(path) or "").split()
        names.update(first[:1])
    return names


# -- mapping files -----------------------------------------------------------------------------------


def _from_dcgm_mapping(job: str, directory: Path) -> tuple[set[GpuId], set[GpuId]]:
    mapped: set[GpuId] = set()
    shared: set[GpuId] = set()
    for path in _entries(directory):
        name = _DCGM_FILE.match(path.name)
        content = _read_text(path)
        if name is None or content is None:
            continue
        jobs = {line.strip() for line in content.splitlines() if line.strip()}
        if job not in jobs:
            continue
        gpu: GpuId = int(name[1]) if name[2] is None else mig_gpu(int(name[1]), int(name[2]))
        mapped.add(gpu)
        if len(jobs) > 1:
            shared.add(gpu)
    return mapped, shared


def _from_gpustat(job: str, directory: Path, uuids: Mapping[str, GpuId]) -> set[GpuId]:
    """GPUs whose jobstats file names ``job``.

    The prolog writes ``<ordinal>`` and ``GPU-<uuid>`` for a whole GPU, and
    ``MIG-<uuid>`` for a MIG instance (then the ordinal is Slurm's, not a GPU
    index). So MIG files win, then ordinals, then GPU UUIDs NVML can map.
    """
    mig: set[GpuId] = set()
    ordinals: set[GpuId] = set()
    gpu_uuids: set[GpuId] = set()
    for path in _entries(directory):
        content = _read_text(path)
        if content is None or content.split()[:1] != [job]:
            continue
        name = path.name
        if name.startswith("MIG-"):
            mig.add(uuids.get(name, name))
        elif _ORDINAL.match(name):
            ordinals.add(int(name))
        elif name.startswith("GPU-") and name in uuids:
            gpu_uuids.add(uuids[name])
    return mig or ordinals or gpu_uuids


# -- processes ---------------------------------------------------------------------------------------


def _parent_pid(pid: int, proc_root: Path) -> int | None:
    stat = _read_text(proc_root / str(pid) / "stat")
    if stat is None:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def _by_pid_ancestry(target: int, gpu_pids: Mapping[GpuId, Sequence[int]], proc_root: Path) -> set[GpuId]:
    found: set[GpuId] = set()
    for gpu, pids in gpu_pids.items():
        for pid in pids:
            if _descends_from(pid, target, proc_root):
                found.add(gpu)
                break
    return found


def _descends_from(pid: int, ancestor: int, proc_root: Path) -> bool:
    current: int | None = pid
    for _ in range(_PID_ANCESTRY_LIMIT):
        if current is None or current <= 0:
            return False
        if current == ancestor:
            return True
        current = _parent_pid(current, proc_root)
    return False


@dataclass(frozen=True)
class CgroupOwner:
    """Who a process belongs to, read from its cgroup paths."""

    slurm_job: str | None = None
    pod_uid: str | None = None


def cgroup_owner(pid: int, proc_root: Path = Path("/proc")) -> CgroupOwner | None:
    """The Slurm job and Kubernetes pod of ``pid`` from ``/proc/<pid>/cgroup``; None when it is gone."""
    content = _read_text(proc_root / str(pid) / "cgroup")
    if content is None:
        return None
    slurm_job: str | None = None
    pod_uid: str | None = None
    for line in content.splitlines():
        # "hierarchy-id:controllers:path"; v2 has the single line "0::path"
        path = line.split(":", 2)[-1]
        if slurm_job is None and (match := _CGROUP_SLURM_JOB.search(path)):
            slurm_job = match[1]
        if pod_uid is None and (match := _CGROUP_POD.search(path)):
            pod_uid = _normalise_pod_uid(match[1])
    return CgroupOwner(slurm_job, pod_uid)


def _from_cgroups(
    job: _Job, gpu_pids: Mapping[GpuId, Sequence[int]], proc_root: Path
) -> tuple[set[GpuId], set[GpuId]]:
    mapped: set[GpuId] = set()
    shared: set[GpuId] = set()
    for gpu, pids in gpu_pids.items():
        owners = [o for o in (cgroup_owner(pid, proc_root) for pid in pids) if o is not None]
        mine = [o for o in owners if _owned_by(o, job)]
        if mine:
            mapped.add(gpu)
            if len(mine) < len(owners):
                shared.add(gpu)
    return mapped, shared


def _owned_by(owner: CgroupOwner, job: _Job) -> bool:
    if job.kind == "pod":
        return owner.pod_uid == job.value
    return owner.slurm_job == job.value
