"""Job → GPU resolution against fake /proc, dcgm-exporter and jobstats trees built in tmp_path.

The trees copy what real nodes hold: Slurm's cgroup v1 hierarchy and its v2
``slurmstepd.scope``, kubelet's systemd and cgroupfs pod slices, dcgm-exporter
mapping files written by a prolog, and jobstats' ``/run/gpustat`` files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_nvml import MIB, MIG_UUIDS, FakeClock, mig_h100

from collectors.errors import JobNotFound
from collectors.jobmap import CgroupOwner, JobGpus, cgroup_owner, resolve_job_gpus
from collectors.nvml import NvmlSource

POD_UID = "8f3e5c1a-2b4d-4e6f-9a8b-7c6d5e4f3a2b"
OTHER_POD_UID = "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
GPU_UUIDS = (
    "GPU-5c1e7a52-6f0b-4a0e-9d8c-3b1f2e4d6a71",
    "GPU-a4f9e0c3-1d2b-47e8-8c6a-0e5d3b2f9a18",
)
MIG_UUID = "MIG-265a219d-a49f-578a-825d-222c72699c16"


def slurm_v1(job: int, uid: int = 1000) -> str:
    """/proc/PID/cgroup of a Slurm task under cgroup v1 (task/cgroup plugin)."""
    step = f"/slurm/uid_{uid}/job_{job}/step_0"
    return (
        "12:pids:/system.slice/slurmd.service\n"
        f"11:devices:{step}/task_0\n"
        f"10:memory:{step}/task_0\n"
        "9:blkio:/system.slice/slurmd.service\n"
        f"8:cpuset:{step}\n"
        f"7:freezer:{step}\n"
        "6:cpu,cpuacct:/system.slice/slurmd.service\n"
        "1:name=systemd:/system.slice/slurmd.service\n"
    )


def slurm_v2(job: int) -> str:
    """/proc/PID/cgroup of a Slurm task under cgroup v2 (cgroup/v2 plugin)."""
    return f"0::/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0\n"


def pod_systemd(uid: str) -> str:
    """cgroup v2, kubelet with the systemd cgroup driver: dashes in the uid become underscores."""
    slice_uid = uid.replace("-", "_")
    return (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice_uid}.slice/"
        "cri-containerd-3f1c0b5e8a9d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b.scope\n"
    )


def pod_cgroupfs(uid: str) -> str:
    """cgroup v1, kubelet with the cgroupfs driver."""
    container = "4c2d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d"
    return (
        f"11:devices:/kubepods/burstable/pod{uid}/{container}\n"
        f"10:memory:/kubepods/burstable/pod{uid}/{container}\n"
        "1:name=systemd:/system.slice/containerd.service\n"
    )


def add_process(proc: Path, pid: int, ppid: int, cgroup: str = "0::/\n", comm: str = "python3") -> None:
    directory = proc / str(pid)
    directory.mkdir(parents=True)
    (directory / "cgroup").write_text(cgroup)
    (directory / "stat").write_text(
        f"{pid} ({comm}) S {ppid} {pid} {ppid} 0 -1 4194560 53122 0 12 0 1721 388 0 0 20 0 9 0 "
        "88231 21474836480 931234 18446744073709551615\n"
    )


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    return root


@pytest.fixture
def empty_gpustat(tmp_path: Path) -> Path:
    return tmp_path / "run" / "gpustat"  # absent, as on nodes without jobstats


# -- cgroups -----------------------------------------------------------------------------------------


def test_slurm_cgroup_v1(proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 4242, 4200, slurm_v1(1234))
    add_process(proc, 4243, 4200, slurm_v1(1234))
    add_process(proc, 5151, 5100, slurm_v1(9876, uid=1001))
    gpus = resolve_job_gpus(
        "1234", gpu_pids={0: [4242], 1: [4243], 2: [5151]}, proc_root=proc, gpustat_dir=empty_gpustat
    )
    assert gpus == JobGpus((0, 1), "Slurm job cgroups of the processes on them")


def test_slurm_cgroup_v2_with_prefix(proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 4242, 4200, slurm_v2(1234))
    add_process(proc, 5151, 5100, slurm_v2(9876))
    gpus = resolve_job_gpus(
        "slurm:9876", gpu_pids={0: [4242], 3: [5151]}, proc_root=proc, gpustat_dir=empty_gpustat
    )
    assert gpus.gpu_indices == (3,)


def test_gpu_shared_by_two_slurm_jobs(proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 4242, 4200, slurm_v2(1234))
    add_process(proc, 5151, 5100, slurm_v2(9876))
    gpus = resolve_job_gpus(
        "1234", gpu_pids={0: [4242, 5151], 1: [4242]}, proc_root=proc, gpustat_dir=empty_gpustat
    )
    assert gpus.gpu_indices == (0, 1)
    assert gpus.shared == (0,)


def test_kubernetes_pod_systemd_driver(proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 301, 300, pod_systemd(POD_UID))
    add_process(proc, 401, 400, pod_systemd(OTHER_POD_UID))
    gpus = resolve_job_gpus(POD_UID, gpu_pids={0: [301], 1: [401]}, proc_root=proc, gpustat_dir=empty_gpustat)
    assert gpus == JobGpus((0,), "Kubernetes pod cgroups of the processes on them")


def test_kubernetes_pod_cgroupfs_driver(proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 301, 300, pod_cgroupfs(POD_UID))
    add_process(proc, 401, 400, pod_cgroupfs(OTHER_POD_UID))
    gpus = resolve_job_gpus(
        f"pod:{POD_UID.upper()}", gpu_pids={0: [401], 1: [301]}, proc_root=proc, gpustat_dir=empty_gpustat
    )
    assert gpus.gpu_indices == (1,)


def test_mig_instance_from_cgroups(proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 4242, 4200, slurm_v2(1234))
    add_process(proc, 5151, 5100, slurm_v2(9876))
    gpus = resolve_job_gpus(
        "1234", gpu_pids={"0/1": [4242], "0/2": [5151]}, proc_root=proc, gpustat_dir=empty_gpustat
    )
    assert gpus.gpu_indices == ("0/1",)


def test_vanished_process_is_skipped(proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 4242, 4200, slurm_v2(1234))
    gpus = resolve_job_gpus("1234", gpu_pids={0: [4242, 99999]}, proc_root=proc, gpustat_dir=empty_gpustat)
    assert gpus.gpu_indices == (0,)
    assert gpus.shared == ()


@pytest.mark.parametrize(
    ("content", "owner"),
    [
        (slurm_v1(1234), CgroupOwner(slurm_job="1234")),
        (slurm_v2(77), CgroupOwner(slurm_job="77")),
        (pod_systemd(POD_UID), CgroupOwner(pod_uid=POD_UID)),
        (pod_cgroupfs(POD_UID), CgroupOwner(pod_uid=POD_UID)),
        # guaranteed QoS pods sit directly under kubepods
        (
            f"0::/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-ab.scope\n",
            CgroupOwner(pod_uid=POD_UID),
        ),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", CgroupOwner()),
        ("0::/system.slice/job_runner.service\n", CgroupOwner()),  # not a Slurm job
    ],
)
def test_cgroup_owner(proc: Path, content: str, owner: CgroupOwner) -> None:
    add_process(proc, 10, 1, content)
    assert cgroup_owner(10, proc) == owner


def test_cgroup_owner_of_a_gone_process(proc: Path) -> None:
    assert cgroup_owner(12345, proc) is None


# -- dcgm-exporter mapping directory -----------------------------------------------------------------


def test_dcgm_mapping_files(tmp_path: Path, proc: Path, empty_gpustat: Path) -> None:
    mapping = tmp_path / "dcgm-job-map"
    mapping.mkdir()
    (mapping / "0").write_text("1234\n")
    (mapping / "1").write_text("1234\n")
    (mapping / "2").write_text("9876\n")
    (mapping / "README").write_text("1234\n")  # not a GPU index: ignored, as dcgm-exporter does
    (mapping / "3").mkdir()
    gpus = resolve_job_gpus("1234", proc_root=proc, hpc_job_dir=mapping, gpustat_dir=empty_gpustat)
    assert gpus == JobGpus((0, 1), f"dcgm-exporter job mapping files in {mapping}")


def test_dcgm_mapping_shared_gpu_and_mig(tmp_path: Path, proc: Path, empty_gpustat: Path) -> None:
    mapping = tmp_path / "dcgm-job-map"
    mapping.mkdir()
    (mapping / "0").write_text("1234\n9876\n")  # two jobs share GPU 0
    (mapping / "1.2").write_text("9876\n")  # MIG: GPU 1, GPU instance 2
    (mapping / "1.10").write_text("9876\n")
    (mapping / "1.3").write_text("5555\n")
    gpus = resolve_job_gpus("9876", proc_root=proc, hpc_job_dir=mapping, gpustat_dir=empty_gpustat)
    assert gpus.gpu_indices == (0, "1/2", "1/10")
    assert gpus.shared == (0,)


def test_mapping_files_win_over_cgroups(tmp_path: Path, proc: Path, empty_gpustat: Path) -> None:
    mapping = tmp_path / "dcgm-job-map"
    mapping.mkdir()
    (mapping / "2").write_text("1234\n")
    add_process(proc, 4242, 4200, slurm_v2(1234))
    gpus = resolve_job_gpus(
        "1234", gpu_pids={0: [4242]}, proc_root=proc, hpc_job_dir=mapping, gpustat_dir=empty_gpustat
    )
    assert gpus.gpu_indices == (2,)  # GPU 2 is allocated though its process has not started yet


def test_missing_mapping_dir_falls_through_to_cgroups(
    tmp_path: Path, proc: Path, empty_gpustat: Path
) -> None:
    add_process(proc, 4242, 4200, slurm_v1(1234))
    gpus = resolve_job_gpus(
        "1234",
        gpu_pids={0: [4242]},
        proc_root=proc,
        hpc_job_dir=tmp_path / "not-there",
        gpustat_dir=empty_gpustat,
    )
    assert gpus.gpu_indices == (0,)


# -- jobstats /run/gpustat ---------------------------------------------------------------------------


def test_gpustat_ordinal_and_uuid_files(tmp_path: Path, proc: Path) -> None:
    gpustat = tmp_path / "gpustat"
    gpustat.mkdir()
    # what jobstats' prolog writes for job 45916256 on GPUs 0 and 1, and another job on GPU 2
    for name in ("0", "1", GPU_UUIDS[0], GPU_UUIDS[1]):
        (gpustat / name).write_text("45916256 262563\n")
    (gpustat / "2").write_text("45916300 1001\n")
    gpus = resolve_job_gpus("45916256", proc_root=proc, gpustat_dir=gpustat)
    assert gpus == JobGpus((0, 1), f"jobstats files in {gpustat}")


def test_gpustat_uuid_files_alone_need_the_uuid_map(tmp_path: Path, proc: Path) -> None:
    gpustat = tmp_path / "gpustat"
    gpustat.mkdir()
    (gpustat / GPU_UUIDS[1]).write_text("45916256 262563\n")
    with pytest.raises(JobNotFound):
        resolve_job_gpus("45916256", proc_root=proc, gpustat_dir=gpustat)
    gpus = resolve_job_gpus(
        "45916256", proc_root=proc, gpustat_dir=gpustat, gpu_uuids={GPU_UUIDS[0]: 0, GPU_UUIDS[1]: 1}
    )
    assert gpus.gpu_indices == (1,)


def test_gpustat_mig_file(tmp_path: Path, proc: Path) -> None:
    gpustat = tmp_path / "gpustat"
    gpustat.mkdir()
    # for a MIG job the prolog writes the MIG UUID, and Slurm's ordinal (not a GPU index)
    (gpustat / MIG_UUID).write_text("45916256 262563\n")
    (gpustat / "0").write_text("45916256 262563\n")
    assert resolve_job_gpus("45916256", proc_root=proc, gpustat_dir=gpustat).gpu_indices == (MIG_UUID,)
    mapped = resolve_job_gpus("45916256", proc_root=proc, gpustat_dir=gpustat, gpu_uuids={MIG_UUID: "1/2"})
    assert mapped.gpu_indices == ("1/2",)


# -- pid ---------------------------------------------------------------------------------------------


def test_pid_and_its_children(proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 1000, 1, comm="bash")
    add_process(proc, 1001, 1000, comm="torchrun")
    add_process(proc, 1002, 1001, comm="pt_main_thread")
    add_process(proc, 1003, 1001, comm="python (rank 1)")  # spaces and parentheses in comm
    add_process(proc, 2000, 1, comm="python3")
    gpu_pids: dict[int | str, list[int]] = {0: [1002], 1: [1003], 2: [2000]}
    assert resolve_job_gpus(
        "pid:1000", gpu_pids=gpu_pids, proc_root=proc, gpustat_dir=empty_gpustat
    ) == JobGpus((0, 1), "process 1000 or its children run on them")
    assert resolve_job_gpus(
        "pid:2000", gpu_pids=gpu_pids, proc_root=proc, gpustat_dir=empty_gpustat
    ).gpu_indices == (2,)


def test_pid_parent_cycle_terminates(proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 7, 8)
    add_process(proc, 8, 7)
    with pytest.raises(JobNotFound):
        resolve_job_gpus("pid:9", gpu_pids={0: [7]}, proc_root=proc, gpustat_dir=empty_gpustat)


def test_pid_must_be_a_number(proc: Path) -> None:
    with pytest.raises(JobNotFound, match="must be a number"):
        resolve_job_gpus("pid:abc", proc_root=proc)


# -- nothing found -----------------------------------------------------------------------------------


def test_nothing_maps(tmp_path: Path, proc: Path, empty_gpustat: Path) -> None:
    add_process(proc, 4242, 4200, slurm_v2(1234))
    mapping = tmp_path / "dcgm-job-map"
    mapping.mkdir()
    (mapping / "0").write_text("1234\n")
    with pytest.raises(JobNotFound) as caught:
        resolve_job_gpus(
            "555", gpu_pids={0: [4242]}, proc_root=proc, hpc_job_dir=mapping, gpustat_dir=empty_gpustat
        )
    message = str(caught.value)
    assert "\n" not in message
    assert "'555'" in message and str(mapping) in message and str(empty_gpustat) in message


def test_nothing_to_look_at(proc: Path, empty_gpustat: Path) -> None:
    with pytest.raises(JobNotFound, match="no GPU on this node belongs to job '1234'"):
        resolve_job_gpus("1234", proc_root=proc, gpustat_dir=empty_gpustat)


# -- a MIG job, mapped and sampled through the NVML source (fake driver) -------------------------------


def _mig_node(tmp_path: Path, proc: Path, evidence: str) -> tuple[dict[str, Path | None], str]:
    """An H100 in MIG mode whose instance 2 (GPU instance 2, pid 5151) is held by the job, named the way
    ``evidence`` says; instance 1 (pid 4242) is another job's. The job id to ask for is returned."""
    gpustat = tmp_path / "gpustat"
    hpc = tmp_path / "dcgm-job-map"
    gpustat.mkdir()
    hpc.mkdir()
    add_process(proc, 4242, 4200, slurm_v2(1111))
    if evidence == "dcgm":
        (hpc / "0.1").write_text("1111\n")
        (hpc / "0.2").write_text("2222\n")
        add_process(proc, 5151, 5100, slurm_v2(2222))
        return {"hpc_job_dir": hpc, "gpustat_dir": gpustat}, "2222"
    if evidence == "jobstats":
        # The prolog writes the MIG UUID and Slurm's ordinal, which is no GPU index.
        (gpustat / MIG_UUIDS[1]).write_text("2222 262563\n")
        (gpustat / "0").write_text("2222 262563\n")
        add_process(proc, 5151, 5100, "0::/\n")
        return {"hpc_job_dir": None, "gpustat_dir": gpustat}, "2222"
    add_process(proc, 5151, 5100, pod_systemd(POD_UID))
    return {"hpc_job_dir": None, "gpustat_dir": gpustat}, f"pod:{POD_UID}"


@pytest.mark.parametrize("evidence", ["dcgm", "jobstats", "pod"])
def test_mig_job_is_sampled_on_its_instance_only(tmp_path: Path, proc: Path, evidence: str) -> None:
    clock = FakeClock()
    nvml = NvmlSource(nvml=mig_h100(clock), clock=clock.time, sleep=clock.sleep, host="gpu-node-07")
    dirs, job_id = _mig_node(tmp_path, proc, evidence)
    gpus = resolve_job_gpus(
        job_id, gpu_pids=nvml.gpu_pids(), proc_root=proc, gpu_uuids=nvml.gpu_uuids(), **dirs
    )
    assert gpus.gpu_indices == ("0/2",)
    frame = nvml.sample(2.0, 1.0, gpu_indices=gpus.gpu_indices, job_id=job_id).frame
    assert frame["gpu"].tolist() == ["0/2", "0/2"]
    # Instance 2's own memory (2048 MiB of 40192) and SM activity (10 %), not GPU 0's.
    assert frame["mem_used_bytes"].tolist() == [2_048 * MIB] * 2
    assert frame["mem_total_bytes"].tolist() == [40_192 * MIB] * 2
    assert frame["sm_active_ratio"].tolist() == [0.1, 0.1]
