"""A real Slurm on one machine for tests: ``slurmctld`` here, one ``slurmd`` per network namespace.

Debian's ``slurm-wlm`` (22.05) and ``munge``, as ``../shared/NOTES.md`` measured them working:
the controller runs in the root namespace on the lab's bridge address, each compute node is one
namespace host of ``netns_util.netns_lab`` (its own address; the filesystem is shared, so one venv
serves every node). Nothing of the machine's own configuration is used or changed: the lab has its
own munge key, socket and daemon, and its own ``slurm.conf`` named by ``SLURM_CONF`` (which every
Slurm command the tests run gets through ``SlurmLab.env``).

Teardown stops every daemon by its pid file (slurmd by the namespaces' own process lists), then the
namespaces go. A run killed before its teardown is cleaned up by the next lab: the daemons' pid
files are recorded in ``/run/mscluster-test-labs/slurm/<tag>.json`` first.
"""
from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import psutil
import pytest

from netns_util import LAB_STATE_DIR, NetnsLab, netns_lab, netns_pids
from sshd_util import skip_or_fail, stop_process_tree

SLURM_TOOLS = ("slurmctld", "slurmd", "srun", "sbatch", "salloc", "scontrol", "squeue", "scancel", "munged")
START_TIMEOUT_S = 30.0
CPUS_PER_NODE = 2


def require_slurm() -> None:
    """Skip (or fail under CI) unless we are root and Slurm and munge are installed."""
    if os.geteuid() != 0:
        skip_or_fail("needs root to run slurmd in network namespaces")
    missing = [t for t in SLURM_TOOLS if shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]
    if missing:
        skip_or_fail(f"Slurm tools missing ({', '.join(missing)}): run scripts/ci_system_deps.sh as root")


@dataclass(frozen=True)
class SlurmLab:
    """The running cluster: its nodes (name -> namespace host) and the environment that reaches it."""

    lab: NetnsLab
    nodes: tuple[str, ...]  # NodeName of each namespace host, in order
    conf: str  # the slurm.conf every command must read
    workdir: str

    @property
    def env(self) -> dict[str, str]:
        """This machine's environment plus SLURM_CONF, with no allocation of an outer Slurm."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
        env["SLURM_CONF"] = self.conf
        return env

    def run(self, *argv: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    def address(self, node: str) -> str:
        return self.lab.hosts[self.nodes.index(node)].address

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", job_id, check=False).stdout
        for word in out.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def wait_idle(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every node is idle (no job left on any)."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
            states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
            if all(states.get(n) == "idle" for n in self.nodes):
                return
            time.sleep(0.3)
        raise RuntimeError(f"Slurm nodes not idle within {timeout:g} s: {out.strip()!r}")


def _conf(workdir: Path, lab: NetnsLab, nodes: Sequence[str], socket_path: Path) -> str:
    spool = workdir / "spool"
    lines = [
        "ClusterName=mscluster-test",
        f"SlurmctldHost={socket.gethostname()}({lab.gateway})",  # the real hostname, else "not a valid controller"
        "SlurmUser=root", "SlurmdUser=root",
        # cred_expire: also how long a requeued job waits before it may start again (default 120 s)
        "AuthType=auth/munge", f"AuthInfo=socket={socket_path},cred_expire=10", "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "ReturnToService=2", "SchedulerType=sched/backfill",
        f"StateSaveLocation={spool / 'ctld'}", f"SlurmdSpoolDir={spool / 'd_%n'}",
        f"SlurmctldPidFile={workdir / 'slurmctld.pid'}", f"SlurmdPidFile={workdir / 'slurmd_%n.pid'}",
        f"SlurmctldLogFile={workdir / 'slurmctld.log'}", f"SlurmdLogFile={workdir / 'slurmd_%n.log'}",
        "SlurmctldPort=6817", "SlurmdPort=6818",
        "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "MinJobAge=300", "KillWait=5",
        "MessageTimeout=10", "JobRequeue=1",
    ]
    for node, host in zip(nodes, lab.hosts):
        lines.append(f"NodeName={node} NodeAddr={host.address} NodeHostname={node} CPUs={CPUS_PER_NODE} "
                     "RealMemory=4000 State=UNKNOWN")
    lines.append(f"PartitionName=main Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP")
    (spool / "ctld").mkdir(parents=True, exist_ok=True)
    path = workdir / "slurm.conf"
    path.write_text("\n".join(lines) + "\n")
    # without it slurmd fails here: "No filesystem mounted on /sys/fs/cgroup" (cgroup v1 on this machine)
    (workdir / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
    return str(path)


def _start_munged(mdir: Path) -> tuple[Path, Path]:
    """A private munged (own key, socket, pid file) in ``mdir`` as the munge user; returns (socket, pid file).

    ``mdir`` must be reachable by the munge user (pytest's own tmp folders are root's alone)."""
    mdir.mkdir(mode=0o700, exist_ok=True)
    key = mdir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    user = pwd.getpwnam("munge")
    for path in (mdir, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    sock, pid_file = mdir / "munge.socket", mdir / "munged.pid"
    # munged refuses a socket folder that others can write to, and checks every folder above it
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--key-file={key}", f"--socket={sock}",
                    f"--pid-file={pid_file}", f"--log-file={mdir / 'munged.log'}", f"--seed-file={mdir / 'seed'}",
                    "--force"], check=True, capture_output=True, text=True, timeout=30)
    _wait_file(pid_file, "munged")
    return sock, pid_file


def _wait_file(path: Path, what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not write {path} within {timeout:g} s")
        time.sleep(0.05)


def _pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_pid_file(path: Path, name: str) -> None:
    """Stop the daemon whose pid the file holds, if that process still is that daemon."""
    pid = _pid(path)
    if pid is None:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        if psutil.Process(pid).name() == name:
            stop_process_tree(pid, grace=2.0)


SLURM_STATE_DIR = os.path.join(LAB_STATE_DIR, "slurm")  # not beside the netns labs' files: another format


def reap_stale_slurm(state_dir: str = SLURM_STATE_DIR) -> None:
    """Stop the daemons of a Slurm lab whose owner died before its teardown."""
    for state_file in Path(state_dir).glob("*.json"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        owner = state.get("owner")
        if owner and psutil.pid_exists(owner):
            continue
        for path, name in state.get("pid_files", []):
            _stop_pid_file(Path(path), name)
        state_file.unlink(missing_ok=True)


@contextlib.contextmanager
def slurm_lab(workdir: Path, count: int = 2) -> Iterator[SlurmLab]:
    """A Slurm cluster of ``count`` nodes (namespace hosts) and a controller; all stopped on exit."""
    require_slurm()
    reap_stale_slurm()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with netns_lab(workdir / "netns", count=count) as lab:
        nodes = tuple(f"n{i + 1}" for i in range(count))
        os.makedirs(SLURM_STATE_DIR, mode=0o700, exist_ok=True)
        state_file = Path(SLURM_STATE_DIR) / f"{lab.bridge}.json"
        munge_dir = Path(tempfile.mkdtemp(prefix="mscluster-munge-", dir="/tmp"))
        munge_dir.chmod(0o755)  # the munge user enters it; its munge/ folder is the munge user's alone
        munge_pid = munge_dir / "munge" / "munged.pid"
        pid_files = [(str(munge_pid), "munged"), (str(workdir / "slurmctld.pid"), "slurmctld")]
        state_file.write_text(json.dumps({"owner": os.getpid(), "pid_files": pid_files}))
        try:
            sock, _ = _start_munged(munge_dir / "munge")
            conf = _conf(workdir, lab, nodes, sock)
            slurm = SlurmLab(lab=lab, nodes=nodes, conf=conf, workdir=str(workdir))
            subprocess.run(["slurmctld", "-f", conf], env=slurm.env, check=True, capture_output=True, timeout=30)
            _wait_file(workdir / "slurmctld.pid", "slurmctld")
            for node, host in zip(nodes, lab.hosts):
                subprocess.run(host.exec_argv("slurmd", "-f", conf, "-N", node), env=slurm.env, check=True,
                               capture_output=True, timeout=30)
            slurm.wait_idle()
            yield slurm
        finally:
            for host in lab.hosts:  # slurmd and whatever a job left, by the namespace's own list
                for pid in netns_pids(host.netns):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        psutil.Process(pid).kill()
            for path, name in reversed(pid_files):
                _stop_pid_file(Path(path), name)
            shutil.rmtree(munge_dir, ignore_errors=True)
            state_file.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmLab]:
    """Three Slurm nodes and a controller, brought up once for the session (skips, or fails under CI): the
    jobs run on two, the third is the spare node of ``slurm.spares``."""
    with slurm_lab(tmp_path_factory.mktemp("slurm"), count=3) as lab:
        yield lab

