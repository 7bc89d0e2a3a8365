"""A real one-node Slurm cluster with accounting, for the Slurm tests (and the CLI's).

Started from Debian's packages (Slurm 22.05) with a private configuration:
its own munged (own key and socket, run as the munge user), MariaDB on a
private data directory and port, slurmdbd, slurmctld and slurmd, all on free
ports on 127.0.0.1, all stopped by process id at the end. The node is this
host (``hostname -s``) with 4 "GPUs" that are character devices made by
``mknod`` (``/dev/null``'s numbers), declared in ``gres.conf``; a job asking
``--gres=gpu:2`` runs with ``CUDA_VISIBLE_DEVICES=0,1`` and ``scontrol -d``
shows ``GRES=gpu:2(IDX:0-1)``. Commands reach it through :attr:`SlurmCluster.env`
(``SLURM_CONF``). Needs root; fails (never skips) without the packages.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = (
    "install Slurm with accounting: "
    "sudo apt-get install slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
)
BINARIES = (
    "munged",
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "scontrol",
    "sbatch",
    "sinfo",
    "squeue",
    "scancel",
    "sacct",
    "mariadbd",
    "mariadb-install-db",
)
READY_TIMEOUT_SECONDS = 45.0
STOP_TIMEOUT_SECONDS = 15.0
FAKE_GPUS = 4
CPUS = 8  # more than this VM has (config_overrides), so several test jobs run at once
_JOB_STATE = re.compile(r"(?:^|\s)JobState=(\S+)")
_OUTPUT = "job-{job_id}.out"  # each job's output file under work_dir (sbatch --output, %j = the id)


@dataclass
class SlurmCluster:
    """A running one-node cluster: the environment its commands need, and its daemons."""

    env: dict[str, str]
    work_dir: Path
    node: str
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def run(self, argv: Sequence[str], timeout_seconds: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Runs a Slurm command against this cluster; fails the test on a non-zero exit."""
        done = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout_seconds, check=False
        )
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed: {done.stderr.strip()}\n{self.logs()}", pytrace=False)
        return done

    def submit(self, *sbatch_args: str, command: str = "sleep 300") -> str:
        """Submits a batch job (``sbatch ARGS --wrap COMMAND``) and returns its id."""
        done = self.run(
            [
                "sbatch",
                "--parsable",
                f"--chdir={self.work_dir}",
                f"--output={self.work_dir}/{_OUTPUT.replace('{job_id}', '%j')}",
                *sbatch_args,
                "--wrap",
                command,
            ]
        )
        return done.stdout.strip().split(";")[0]

    def state(self, job_id: str) -> str:
        """The job's state as the controller says (``scontrol show job -o``)."""
        match = _JOB_STATE.search(self.run(["scontrol", "-o", "show", "job", job_id]).stdout)
        return match.group(1) if match else ""

    def wait_state(self, job_id: str, states: frozenset[str], timeout_seconds: float = 30.0) -> str:
        """Waits until the job is in one of ``states``; returns that state."""
        deadline = time.monotonic() + timeout_seconds
        state = ""
        while time.monotonic() < deadline:
            state = self.state(job_id)
            if state in states:
                return state
            time.sleep(0.2)
        pytest.fail(f"job {job_id} is {state}, not {sorted(states)} after {timeout_seconds} s\n{self.logs()}")

    def submit_running(self, *sbatch_args: str, command: str = "sleep 300") -> str:
        """Submits a job and waits until it runs; returns its id."""
        job_id = self.submit(*sbatch_args, command=command)
        self.wait_state(job_id, frozenset({"RUNNING"}))
        return job_id

    def output(self, job_id: str, timeout_seconds: float = 20.0) -> str:
        """The job's first line of output, once its batch script wrote it: the controller says
        RUNNING before slurmd has started the script, so the file can be missing or empty at first."""
        path = self.work_dir / _OUTPUT.format(job_id=job_id)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().endswith("\n"):
                return path.read_text()
            time.sleep(0.2)
        pytest.fail(f"job {job_id} wrote no line to {path} after {timeout_seconds} s\n{self.logs()}")

    def wait_accounted(
        self, job_id: str, state: str, timeout_seconds: float = 20.0, *, name: str | None = None
    ) -> None:
        """Waits until ``sacct`` shows the job in ``state`` (and under ``name``): slurmctld reports to
        slurmdbd asynchronously, and a job that ends within a second can first be recorded under
        slurmdbd's placeholder name "allocation"."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            done = self.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,JobName"])
            got_state, _, got_name = done.stdout.strip().partition("|")
            if got_state.split(" ")[0] == state and name in (None, got_name):
                return
            time.sleep(0.3)
        pytest.fail(f"sacct does not show job {job_id} {state} after {timeout_seconds} s\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted((self.work_dir / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancels every job, then stops the daemons by pid, last started first."""
        if self.processes and self.processes[-1][1].poll() is None:
            subprocess.run(
                ["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, check=False
            )
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                queue = subprocess.run(
                    ["squeue", "-h"], env=self.env, capture_output=True, text=True, check=False
                )
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.2)
        for _name, process in reversed(self.processes):
            _stop(process)
        self.processes.clear()


def require_slurm() -> None:
    """Fails the test run (never skips) when a binary is missing or this is not root."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        pytest.fail(
            f"the Slurm tests need a real Slurm ({', '.join(missing)} missing): {INSTALL_HINT}", pytrace=False
        )
    if os.geteuid() != 0:
        pytest.fail(
            "the Slurm tests start slurmctld and slurmd as SlurmUser=root: run them as root", pytrace=False
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_cluster(work: Path, munge_dir: Path) -> SlurmCluster:
    """Writes a private configuration under ``work``, starts the daemons and waits until the node is idle."""
    node = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log", "dev", "db"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    for index in range(FAKE_GPUS):
        os.mknod(work / "dev" / f"nvidia{index}", 0o666 | 0o020000, os.makedev(1, 3))
    ports = {name: free_port() for name in ("ctld", "slurmd", "dbd", "mariadb")}
    munge_socket = munge_dir / "munge.socket"
    slurm_conf = work / "slurm.conf"
    slurm_conf.write_text(
        f"""\
ClusterName=zest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmdPort={ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
GresTypes=gpu
MpiDefault=none
ReturnToService=2
StateSaveLocation={work}/state
SlurmdSpoolDir={work}/spool
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd.pid
SlurmctldLogFile={work}/log/slurmctld.log
SlurmdLogFile={work}/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["dbd"]}
AccountingStoragePass={munge_socket}
AccountingStorageTRES=gres/gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={CPUS} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    (work / "gres.conf").write_text(f"Name=gpu File={work}/dev/nvidia[0-{FAKE_GPUS - 1}]\n")
    dbd_conf = work / "slurmdbd.conf"  # slurmdbd reads it beside SLURM_CONF
    dbd_conf.write_text(
        f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["dbd"]}
SlurmUser=root
PidFile={work}/slurmdbd.pid
LogFile={work}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mariadb"]}
StorageUser=root
StorageLoc=slurm_acct_db
"""
    )
    dbd_conf.chmod(0o600)
    env = {**os.environ, "SLURM_CONF": str(slurm_conf)}
    cluster = SlurmCluster(env=env, work_dir=work, node=node)
    log = work / "log"
    try:
        cluster.processes.append(("munged", _start_munged(munge_dir, log)))
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={work}/db", "--user=root", "--skip-test-db",
             "--auth-root-authentication-method=normal"],
            stdout=(log / "mariadb-install.log").open("wb"), stderr=subprocess.STDOUT, check=True, timeout=60,
        )  # fmt: skip
        mariadb = [
            "mariadbd", "--no-defaults", f"--datadir={work}/db", f"--socket={work}/mariadb.sock",
            f"--port={ports['mariadb']}", "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin",
            f"--pid-file={work}/mariadb.pid", f"--log-error={log}/mariadb.log",
        ]  # fmt: skip
        cluster.processes.append(("mariadbd", _spawn(mariadb, env, log / "mariadbd.out")))
        _wait_port(ports["mariadb"], cluster)
        cluster.processes.append(("slurmdbd", _spawn(["slurmdbd", "-D"], env, log / "slurmdbd.out")))
        _wait_port(ports["dbd"], cluster)
        ctld = ["slurmctld", "-D", "-f", str(slurm_conf)]
        cluster.processes.append(("slurmctld", _spawn(ctld, env, log / "slurmctld.out")))
        cluster.processes.append(
            ("slurmd", _spawn(["slurmd", "-D", "-f", str(slurm_conf)], env, log / "slurmd.out"))
        )
        _wait_idle(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running one-node Slurm with accounting; every daemon is stopped by pid at the end."""
    require_slurm()
    work = tmp_path_factory.mktemp("slurm")
    # munged runs as the munge user, who cannot enter pytest's root-only temporary directories.
    munge_dir = Path(tempfile.mkdtemp(prefix="zest-munge-"))
    try:
        cluster = start_cluster(work, munge_dir)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(munge_dir, ignore_errors=True)


def _start_munged(munge_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """A private munged with a fresh 1024-byte key, run as the munge user, socket in ``munge_dir``."""
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    shutil.chown(key, "munge", "munge")
    shutil.chown(munge_dir, "munge", "munge")
    munge_dir.chmod(0o711)  # munged wants the socket's directory searchable by all
    argv = [
        "munged", "--foreground", f"--socket={munge_dir}/munge.socket", f"--key-file={key}",
        f"--log-file={munge_dir}/munged.log", f"--pid-file={munge_dir}/munged.pid",
        f"--seed-file={munge_dir}/munged.seed",
    ]  # fmt: skip
    with (log / "munged.out").open("wb") as out:
        process = subprocess.Popen(
            argv, user="munge", group="munge", stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not (munge_dir / "munge.socket").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"munged did not start: {(log / 'munged.out').read_text()}", pytrace=False)
        time.sleep(0.05)
    return process


def _spawn(argv: list[str], env: Mapping[str, str], out_path: Path) -> subprocess.Popen[bytes]:
    with out_path.open("wb") as out:
        return subprocess.Popen(
            argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_port(port: int, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        _check_alive(cluster)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(
        f"nothing listens on port {port} after {READY_TIMEOUT_SECONDS} s\n{cluster.logs()}", pytrace=False
    )


def _wait_idle(cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    state = ""
    while time.monotonic() < deadline:
        _check_alive(cluster)
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=cluster.env, capture_output=True, text=True, check=False
        )
        state = done.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.2)
    pytest.fail(f"the Slurm node is {state!r}, not idle, after {READY_TIMEOUT_SECONDS} s\n{cluster.logs()}")


def _check_alive(cluster: SlurmCluster) -> None:
    for name, process in cluster.processes:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}\n{cluster.logs()}", pytrace=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
