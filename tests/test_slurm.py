"""Resolving a Slurm job id, against a real one-node Slurm 22.05 with accounting (slurmdbd + MariaDB).

The cluster (``slurmcluster.slurm_cluster``) runs jobs on 4 fake GPUs; ``sacct``
answers from its own slurmdbd. Faults the cluster cannot produce on demand
(permission denied, a controller that forgot the job, accounting switched off)
are scenarios of a runner that answers as Slurm 22.05 does (messages as Slurm
prints them); the parsers are also tested on recorded multi-node output.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from slurmcluster import SlurmCluster

from collectors.errors import (
    JobNotFound,
    SchedulerError,
    SlurmAccountingUnavailable,
    SlurmJobNotFound,
    SlurmPermissionDenied,
    SlurmQueryError,
    SlurmUnavailable,
    SourceQueryError,
    SourceUnavailable,
)
from collectors.slurm import (
    SACCT_FIELDS,
    NodeGpus,
    ReuseCount,
    Slurm,
    SlurmJob,
    count_reuse,
    defaults_from_slurm,
    job_from_sacct,
    parse_duration_seconds,
    parse_gres,
    parse_local_time,
    parse_sacct,
    parse_scontrol_job,
    subprocess_runner,
)

BERLIN = ZoneInfo("Europe/Berlin")
HOURS = 3600.0


def _slurm(cluster: SlurmCluster, **kwargs: float) -> Slurm:
    return Slurm(subprocess_runner(env=cluster.env, **kwargs))


def _done(
    argv: Sequence[str], stdout: str = "", stderr: str = "", code: int = 0
) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(list(argv), code, stdout, stderr)


class Scripted:
    """A runner answering by the command's first words; records what ran."""

    def __init__(self, answers: dict[str, subprocess.CompletedProcess[str] | BaseException]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        for prefix, answer in self.answers.items():
            if " ".join(argv).startswith(prefix):
                if isinstance(answer, BaseException):
                    raise answer
                return answer
        raise AssertionError(f"unexpected command {argv}")


# --- the real cluster


@pytest.fixture(scope="module")
def running_job(slurm_cluster: SlurmCluster) -> str:
    return slurm_cluster.submit_running(
        "--gres=gpu:2",
        "--time=150:00:00",
        "-J",
        "zest-test",
        command='echo "$CUDA_VISIBLE_DEVICES"; sleep 300',
    )


def test_running_job_has_its_gpus_indices_and_limit(slurm_cluster: SlurmCluster, running_job: str) -> None:
    before = datetime.now(UTC)
    job = _slurm(slurm_cluster).job(running_job)

    assert (job.job_id, job.state, job.name, job.user, job.partition) == (
        running_job,
        "RUNNING",
        "zest-test",
        "root",
        "debug",
    )
    assert job.nodes == (slurm_cluster.node,)
    assert job.gpus == 2
    assert job.gpus_per_node == (NodeGpus(node=slurm_cluster.node, count=2, indices=(0, 1)),)
    assert job.gres == "gpu:2"
    assert job.time_limit_hours == 150.0
    assert job.start_time is not None and job.start_time.tzinfo is UTC
    assert before - timedelta(minutes=2) < job.start_time <= before
    assert job.end_time == job.start_time + timedelta(hours=150)  # a running job's end is its limit
    assert 0 <= job.run_time_seconds < 120
    assert not job.ended and job.source == "scontrol"
    # the indices are those Slurm gave the job's processes
    assert slurm_cluster.output(running_job).split() == ["0,1"]


def test_defaults_of_the_running_job(slurm_cluster: SlurmCluster, running_job: str) -> None:
    job = _slurm(slurm_cluster).job(running_job)
    now = datetime.now(UTC)
    defaults = defaults_from_slurm(job, now)  # this host is the node

    assert (defaults.gpus, defaults.duration_hours) == (2, 150.0)
    assert (defaults.window_start, defaults.window_end) == (job.start_time, now)
    assert defaults.nodes == (slurm_cluster.node,)
    assert defaults.local_gpu_indices == (0, 1)
    assert defaults.notes["gpus"] == f"G = 2 GPUs from Slurm job {running_job} (gres gpu:2)"
    assert defaults.notes["duration_hours"] == f"T = 150 h from Slurm job {running_job}: its time limit"
    assert defaults.notes["local_gpu_indices"].startswith("GPU indices 0,1 on ")


def test_ended_job_gives_its_run_time_and_whole_run(slurm_cluster: SlurmCluster) -> None:
    job_id = slurm_cluster.submit("--gres=gpu:1", "--time=1:00:00", "-J", "zest-ended", command="sleep 1")
    slurm_cluster.wait_state(job_id, frozenset({"COMPLETED"}))
    job = _slurm(slurm_cluster).job(job_id)

    assert job.ended and job.state == "COMPLETED"
    assert job.gpus == 1  # per-node GRES is gone once ended; TRES gres/gpu=1 remains
    assert job.time_limit_hours == 1.0
    assert job.start_time is not None and job.end_time is not None
    assert job.run_time_seconds == (job.end_time - job.start_time).total_seconds()
    assert 1 <= job.run_time_seconds <= 10

    later = job.end_time + timedelta(hours=5)
    defaults = defaults_from_slurm(job, later, hostname=slurm_cluster.node)
    assert defaults.duration_hours == pytest.approx(job.run_time_seconds / HOURS)
    assert (defaults.window_start, defaults.window_end) == (job.start_time, job.end_time)
    assert "its run time, ended COMPLETED" in defaults.notes["duration_hours"]
    assert defaults.local_gpu_indices is None  # Slurm keeps no indices of an ended job


def test_job_the_controller_forgot_is_read_from_accounting(slurm_cluster: SlurmCluster) -> None:
    job_id = slurm_cluster.submit("--gres=gpu:1", "--time=2:00:00", "-J", "zest-forgotten", command="sleep 1")
    slurm_cluster.wait_state(job_id, frozenset({"COMPLETED"}))
    slurm_cluster.wait_accounted(job_id, "COMPLETED", name="zest-forgotten")
    real = subprocess_runner(env=slurm_cluster.env)

    def forgetful(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        # after MinJobAge the controller answers this for an ended job
        if argv[:2] == ["scontrol", "-d"]:
            return _done(argv, stderr="slurm_load_jobs error: Invalid job id specified\n", code=1)
        return real(argv)

    job = Slurm(forgetful).job(job_id)

    assert (job.source, job.job_id, job.state, job.name) == ("sacct", job_id, "COMPLETED", "zest-forgotten")
    assert (job.gpus, job.time_limit_hours, job.nodes) == (1, 2.0, (slurm_cluster.node,))
    assert job.gpus_per_node == (NodeGpus(node=slurm_cluster.node, count=1),)
    assert job.start_time is not None and job.end_time is not None
    assert job.run_time_seconds == (job.end_time - job.start_time).total_seconds()


def test_reuse_counts_earlier_jobs_of_the_same_name(slurm_cluster: SlurmCluster) -> None:
    earlier = [slurm_cluster.submit("-J", "zest-reuse", command="true") for _ in range(2)]
    other = slurm_cluster.submit("-J", "zest-reuse-other", command="true")
    for job_id in [*earlier, other]:
        slurm_cluster.wait_accounted(job_id, "COMPLETED")
    current = slurm_cluster.submit_running("-J", "zest-reuse")
    slurm_cluster.wait_accounted(current, "RUNNING")
    slurm = _slurm(slurm_cluster)

    reuse = slurm.reuse_from_history("root", "zest-reuse", exclude_job_id=current)

    assert reuse == ReuseCount(count=2, days=90)
    assert reuse.note == "R = 2 from Slurm accounting: seen 2 times in 90 days"
    assert slurm.reuse_from_history("root", "zest-reuse").count == 3  # the job itself, when not excluded
    assert slurm.reuse_from_history("root", "zest-never-ran", days=7) == ReuseCount(count=0, days=7)


def test_unknown_job_id_is_its_own_error(slurm_cluster: SlurmCluster) -> None:
    with pytest.raises(SlurmJobNotFound, match=r"^Slurm knows no job 987654: ") as caught:
        _slurm(slurm_cluster).job("987654")
    assert isinstance(caught.value, SchedulerError) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 10


def test_a_timed_out_command_is_a_query_error(slurm_cluster: SlurmCluster, running_job: str) -> None:
    with pytest.raises(SlurmQueryError, match=r"^scontrol show job gave no answer within 0\.001 s") as caught:
        _slurm(slurm_cluster, timeout_seconds=0.001).job(running_job)
    assert isinstance(caught.value, SchedulerError) and caught.value.exit_code == 12


def test_without_slurm_on_path_slurm_is_unavailable(slurm_cluster: SlurmCluster) -> None:
    env = {**slurm_cluster.env, "PATH": "/nonexistent"}
    with pytest.raises(
        SlurmUnavailable, match=r"^Slurm's scontrol is not installed here: .*apt-get"
    ) as caught:
        Slurm(subprocess_runner(env=env)).job("1")
    assert isinstance(caught.value, SchedulerError) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 11


# --- faults as Slurm reports them


def test_missing_command_is_unavailable() -> None:
    runner = Scripted({"scontrol": FileNotFoundError(2, "No such file or directory", "scontrol")})
    with pytest.raises(SlurmUnavailable, match="scontrol is not installed"):
        Slurm(runner).job("42")


def test_permission_denied_is_its_own_error() -> None:
    denied = "slurm_load_jobs error: Access/permission denied\n"
    runner = Scripted({"scontrol": _done([], stderr=denied, code=1)})
    with pytest.raises(
        SlurmPermissionDenied, match=r"^Slurm denied scontrol show job: .*Access/permission"
    ) as caught:
        Slurm(runner).job("42")
    assert not isinstance(caught.value, (SourceQueryError, SourceUnavailable, JobNotFound))
    assert isinstance(caught.value, SchedulerError)


def test_controller_down_is_a_query_error() -> None:
    # what scontrol prints when slurmctld is down
    stderr = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
    runner = Scripted({"scontrol": _done([], stderr=stderr, code=1)})
    with pytest.raises(
        SlurmQueryError, match=r"scontrol show job failed \(exit 1\): .*\(connect failure\)$"
    ) as caught:
        Slurm(runner).job("42")
    assert "\n" not in str(caught.value)


def test_unknown_job_without_accounting_is_not_found() -> None:
    runner = Scripted(
        {
            "scontrol": _done([], stderr="slurm_load_jobs error: Invalid job id specified\n", code=1),
            "sacct": _done([], stderr="Slurm accounting storage is disabled\n", code=1),
        }
    )
    with pytest.raises(SlurmJobNotFound, match=r"^Slurm knows no job 42: .*accounting \(sacct\) is off"):
        Slurm(runner).job("42")
    with pytest.raises(SlurmAccountingUnavailable, match="accounting is off"):
        Slurm(runner).reuse_from_history("alice", "train")


def test_a_job_id_is_never_passed_as_an_option() -> None:
    runner = Scripted({})
    for bad in ("--all", "42; rm", "", "abc"):
        with pytest.raises(SlurmJobNotFound, match="is not a Slurm job id"):
            Slurm(runner).job(bad)
    assert runner.calls == []


# --- recorded output

# Slurm 22.05 `scontrol -d -o show job` of a two-node job on typed GPUs (format as the real cluster prints
# it above; the nodes' lines are grouped as Slurm groups them), job name with spaces.
MULTI_NODE = (
    "JobId=7781 JobName=llm pretrain v2 UserId=alice(1000) GroupId=alice(1000) MCS_label=N/A Priority=1 "
    "Nice=0 Account=ml QOS=normal JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 DerivedExitCode=0:0 RunTime=1-02:03:04 TimeLimit=3-00:00:00 "
    "TimeMin=N/A SubmitTime=2024-07-01T11:59:00 EligibleTime=2024-07-01T11:59:00 "
    "AccrueTime=2024-07-01T11:59:00 StartTime=2024-07-01T12:00:00 EndTime=2024-07-04T12:00:00 Deadline=N/A "
    "SuspendTime=None SecsPreSuspend=0 LastSchedEval=2024-07-01T12:00:00 Scheduler=Main Partition=gpu "
    "AllocNode:Sid=login1:4242 ReqNodeList=(null) ExcNodeList=(null) NodeList=gpu[01-03] BatchHost=gpu01 "
    "NumNodes=3 NumCPUs=48 NumTasks=3 CPUs/Task=16 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=48,mem=96G,node=3,billing=48,gres/gpu=6,gres/gpu:a100=6 Socks/Node=* "
    "NtasksPerN:B:S:C=1:0:*:* CoreSpec=* JOB_GRES=gpu:a100:6   Nodes=gpu[01-02] CPU_IDs=0-15 Mem=32768 "
    "GRES=gpu:a100:2(IDX:0,2)   Nodes=gpu03 CPU_IDs=16-31 Mem=32768 GRES=gpu:a100:2(IDX:1-2) "
    "MinCPUsNode=16 MinMemoryNode=32G MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK "
    "Contiguous=0 Licenses=(null) Network=(null) Command=/home/alice/train.sh WorkDir=/home/alice "
    "StdErr=/home/alice/slurm-7781.out StdIn=/dev/null StdOut=/home/alice/slurm-7781.out Power= "
    "TresPerNode=gres:gpu:a100:2\n"
)
HOSTLISTS = {"gpu[01-03]": ("gpu01", "gpu02", "gpu03"), "gpu[01-02]": ("gpu01", "gpu02"), "gpu03": ("gpu03",)}

# The same cluster's `sacct -X -n -P -o` SACCT_FIELDS: cancelled, timed out, pending, a name with "|".
SACCT_LINES = (
    "7700|COMPLETED|alice|gpu|gpu[01-02]|billing=32,cpu=32,gres/gpu:a100=4,gres/gpu=4,mem=64G,node=2|4320|"
    "2024-06-20T08:00:00|2024-06-21T20:30:00|131400|llm pretrain v2\n"
    "7712|CANCELLED by 1000|alice|gpu|gpu04|billing=16,cpu=16,gres/gpu=2,mem=32G,node=1|UNLIMITED|"
    "2024-06-25T10:00:00|2024-06-25T10:10:00|600|llm pretrain v2\n"
    "7713|CANCELLED by 1000|alice|gpu|None assigned||4320|None|2024-06-25T10:11:00|0|llm pretrain v2\n"
    "7750_3|TIMEOUT|alice|gpu|gpu05|billing=8,cpu=8,gres/gpu=1,mem=16G,node=1|60|"
    "2024-06-28T00:00:00|2024-06-28T01:00:02|3602|llm pretrain v2\n"
    "7760|PENDING|alice|gpu|None assigned||4320|Unknown|Unknown|0|llm pretrain v2\n"
    "7771|COMPLETED|alice|gpu|gpu01|billing=8,cpu=8,gres/gpu=1,mem=16G,node=1|30|"
    "2024-06-30T00:00:00|2024-06-30T00:10:00|600|eval | sweep\n"
)


def test_multi_node_line_with_typed_gpus_and_index_lists() -> None:
    job = parse_scontrol_job(MULTI_NODE, "7781", expand=lambda h: HOSTLISTS.get(h, ()), local_tz=BERLIN)

    assert (job.name, job.user, job.partition, job.state) == ("llm pretrain v2", "alice", "gpu", "RUNNING")
    assert job.nodes == ("gpu01", "gpu02", "gpu03")
    assert job.gpus_per_node == (
        NodeGpus("gpu01", 2, (0, 2)),
        NodeGpus("gpu02", 2, (0, 2)),
        NodeGpus("gpu03", 2, (1, 2)),
    )
    assert (job.gpus, job.gres) == (6, "gpu:a100:6")
    assert job.time_limit_hours == 72.0
    assert job.run_time_seconds == 26 * HOURS + 3 * 60 + 4
    assert job.start_time == datetime(2024, 7, 1, 10, 0, tzinfo=UTC)  # 12:00 in Berlin (CEST)
    assert job.end_time == datetime(2024, 7, 4, 10, 0, tzinfo=UTC)
    assert job.gpu_indices_on("gpu03.cluster.example") == (1, 2)
    assert job.gpu_indices_on("login1") is None


def test_pending_job_counts_requested_gpus_without_a_start() -> None:
    line = MULTI_NODE.replace("JobState=RUNNING", "JobState=PENDING").replace("=gpu[01-03]", "=")
    line = line.split("JOB_GRES=")[0] + "MinCPUsNode=16 TimeLimit=UNLIMITED TresPerNode=gres:gpu:a100:2"
    line = re.sub(r" TRES=\S+", " TRES=cpu=48,node=3", line)  # no gres/gpu in TRES before it runs
    job = parse_scontrol_job(line, "7781", expand=lambda h: HOSTLISTS.get(h, ()), local_tz=BERLIN)

    assert (job.state, job.nodes, job.gpus, job.gres) == ("PENDING", (), 6, "gpu:a100:2")
    assert job.start_time is None and job.end_time is None and job.time_limit_hours is None
    defaults = defaults_from_slurm(job, datetime(2024, 7, 1, tzinfo=UTC), hostname="gpu01")
    assert (defaults.window_start, defaults.window_end, defaults.duration_hours) == (None, None, None)
    assert set(defaults.notes) == {"gpus"}


def test_array_task_is_picked_from_several_lines() -> None:
    head = "ArrayJobId=899 ArrayTaskId={} JobName=sweep UserId=bob(1001)"
    first = f"JobId=900 {head.format(1)} JobState=RUNNING TimeLimit=01:00:00"
    second = f"JobId=901 {head.format(2)} JobState=PENDING TimeLimit=30:00"
    job = parse_scontrol_job(f"{first}\n{second}\n", "899_2", expand=lambda h: ())
    assert (job.job_id, job.state, job.time_limit_hours) == ("899_2", "PENDING", 0.5)


def test_sacct_lines() -> None:
    rows = parse_sacct(SACCT_LINES, local_tz=BERLIN)

    assert [r.job_id for r in rows] == ["7700", "7712", "7713", "7750_3", "7760", "7771"]
    states = ["COMPLETED", "CANCELLED", "CANCELLED", "TIMEOUT", "PENDING", "COMPLETED"]
    assert [r.state for r in rows] == states
    assert [r.time_limit_minutes for r in rows] == [4320, None, 4320, 60, 4320, 30]
    assert rows[0].start_time == datetime(2024, 6, 20, 6, 0, tzinfo=UTC)
    assert rows[2].start_time is None and rows[4].end_time is None
    assert rows[5].name == "eval | sweep"

    ended = job_from_sacct(rows[0], expand=lambda h: HOSTLISTS.get(h, ()) or ("gpu01", "gpu02"))
    assert (ended.gpus, ended.time_limit_hours, ended.run_time_seconds) == (4, 72.0, 131400.0)
    assert ended.gpus_per_node == (NodeGpus("gpu01", 2), NodeGpus("gpu02", 2))
    defaults = defaults_from_slurm(ended, datetime(2024, 7, 1, tzinfo=UTC), hostname="gpu01")
    assert defaults.duration_hours == 36.5 and defaults.local_gpu_indices is None
    assert defaults.window_end == datetime(2024, 6, 21, 18, 30, tzinfo=UTC)


def test_reuse_counts_only_runs_of_that_user_and_name() -> None:
    rows = parse_sacct(SACCT_LINES, local_tz=BERLIN)
    # 7700, 7712 and 7750_3 ran; 7713 was cancelled before starting, 7760 is pending, 7771 has another name
    assert count_reuse(rows, user="alice", name="llm pretrain v2") == 3
    assert count_reuse(rows, user="alice", name="llm pretrain v2", exclude_job_id="7750_7") == 2
    assert count_reuse(rows, user="bob", name="llm pretrain v2") == 0


def test_sacct_line_with_missing_columns_is_a_query_error() -> None:
    with pytest.raises(SlurmQueryError, match=f"expected {len(SACCT_FIELDS)}"):
        parse_sacct("7700|COMPLETED|alice\n")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6-06:00:00", 150 * 3600),
        ("150:00:00", 150 * 3600),
        ("01:30:00", 5400),
        ("05:07", 307),
        ("45", 2700),
        ("UNLIMITED", None),
        ("Partition_Limit", None),
    ],
)
def test_durations(text: str, seconds: int | None) -> None:
    assert parse_duration_seconds(text) == seconds


def test_durations_zest_cannot_read_are_query_errors() -> None:
    with pytest.raises(SlurmQueryError, match="duration"):
        parse_duration_seconds("soon")


def test_local_times_become_utc() -> None:
    assert parse_local_time("2024-01-15T12:00:00", BERLIN) == datetime(2024, 1, 15, 11, 0, tzinfo=UTC)
    assert parse_local_time("2024-07-15T12:00:00", BERLIN) == datetime(2024, 7, 15, 10, 0, tzinfo=UTC)
    assert parse_local_time("Unknown") is None and parse_local_time("None") is None


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("gpu:2(IDX:0-1)", [(None, 2, (0, 1))]),
        ("gpu:a100:2(IDX:0,2)", [("a100", 2, (0, 2))]),
        ("gpu:a100:1(IDX:0),gpu:v100:2(IDX:2-3),nic:1(IDX:0)", [("a100", 1, (0,)), ("v100", 2, (2, 3))]),
        ("gpu(IDX:0-3)", [(None, 4, (0, 1, 2, 3))]),  # GRES_IDX of older releases
        ("gres:gpu:4", [(None, 4, ())]),
        ("gpu:a100:2(S:0-1)", [("a100", 2, ())]),
        ("", []),
    ],
)
def test_gres(text: str, entries: list[tuple[str | None, int, tuple[int, ...]]]) -> None:
    assert parse_gres(text) == entries


def _job(**changes: object) -> SlurmJob:
    base: dict[str, object] = {
        "job_id": "42",
        "state": "RUNNING",
        "name": "train",
        "user": "alice",
        "partition": "gpu",
        "nodes": ("gpu01", "gpu02"),
        "gpus_per_node": (NodeGpus("gpu01", 2, (0, 1)), NodeGpus("gpu02", 2, (2, 3))),
        "gpus": 4,
        "gres": "gpu:4",
        "time_limit_hours": 150.0,
        "start_time": datetime(2024, 7, 1, 10, tzinfo=UTC),
        "run_time_seconds": 7200.0,
        "end_time": datetime(2024, 7, 7, 16, tzinfo=UTC),
        "source": "scontrol",
    }
    return SlurmJob(**{**base, **changes})  # type: ignore[arg-type]


def test_defaults_while_running() -> None:
    now = datetime(2024, 7, 1, 12, tzinfo=UTC)
    defaults = defaults_from_slurm(_job(), now, hostname="gpu02.cluster.example")

    assert (defaults.gpus, defaults.duration_hours) == (4, 150.0)
    assert (defaults.window_start, defaults.window_end) == (datetime(2024, 7, 1, 10, tzinfo=UTC), now)
    assert (defaults.nodes, defaults.local_gpu_indices) == (("gpu01", "gpu02"), (2, 3))
    assert defaults.notes == {
        "gpus": "G = 4 GPUs from Slurm job 42 (gres gpu:4)",
        "duration_hours": "T = 150 h from Slurm job 42: its time limit",
        "window": "telemetry window 2024-07-01T10:00:00Z to 2024-07-01T12:00:00Z from Slurm job 42: "
        "its run so far (RUNNING)",
        "nodes": "nodes gpu01,gpu02 from Slurm job 42",
        "local_gpu_indices": "GPU indices 2,3 on gpu02 from Slurm job 42 (gres IDX)",
    }


def test_defaults_once_ended() -> None:
    end = datetime(2024, 7, 2, 16, 30, tzinfo=UTC)
    job = _job(state="TIMEOUT", run_time_seconds=30.5 * HOURS, end_time=end, gpus_per_node=())
    defaults = defaults_from_slurm(job, datetime(2024, 8, 1, tzinfo=UTC), hostname="login1")

    assert defaults.duration_hours == 30.5  # the run time, not the 150 h limit
    assert (defaults.window_start, defaults.window_end) == (job.start_time, end)
    assert defaults.local_gpu_indices is None and "local_gpu_indices" not in defaults.notes
    assert defaults.notes["duration_hours"] == (
        "T = 30.5 h from Slurm job 42: its run time, ended TIMEOUT at 2024-07-02T16:30:00Z"
    )
    assert defaults.notes["window"].endswith("its whole run")


def test_job_without_gpus_or_limit_gives_no_g_or_t() -> None:
    job = _job(gpus=0, gres="", gpus_per_node=(), time_limit_hours=None)
    defaults = defaults_from_slurm(job, datetime(2024, 7, 1, 12, tzinfo=UTC), hostname="gpu01")
    assert (defaults.gpus, defaults.duration_hours, defaults.local_gpu_indices) == (None, None, None)
    assert "gpus" not in defaults.notes and "duration_hours" not in defaults.notes
