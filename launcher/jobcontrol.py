"""Jobs that outlive the terminal: a detached launcher's start, ``stop``, and the jobs of a workdir.

A job's launcher names itself in ``status.json`` (``"launcher": {"pid", "host", "started_at"}``,
launcher.status.StatusWriter). ``stop`` signals that process only after checking it is that job's
launcher (same host, a process started no later than the launcher said it started, an ``mscluster
launch`` command line): a pid is never taken on trust, nothing is killed by name. TERM makes the
launcher tear the job down as Ctrl-C does (every agent stops its ranks: TERM, grace, KILL); a
launcher still there after the grace period is KILLed, and its agents, seeing their stdin close,
stop their ranks themselves. Imports no MindSpore.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from launcher.errors import JobDirError
from launcher.status import RESULT_FILE, STATUS_FILE, JobStatus, read_status
from launcher.table import format_table
from mscluster.fsutil import read_json_object

logger = logging.getLogger(__name__)

LAUNCHER_LOG = "launcher.log"  # a detached launcher's own output, in its job folder
STOP_MARGIN_S = 10.0  # beyond the grace period: the launcher's own teardown (agents, logs, result.json)


def launcher_entry(job_dir: str) -> dict[str, Any]:
    """status.json's ``launcher`` entry (``{}`` when there is none)."""
    entry = (read_json_object(os.path.join(job_dir, STATUS_FILE)) or {}).get("launcher")
    return entry if isinstance(entry, dict) else {}


def _is_launcher(pid: int, started_at: float) -> bool:
    """Whether ``pid`` is an ``mscluster launch`` process started by ``started_at`` (not a recycled pid)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.create_time() > started_at + 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        argv = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    own = any(os.path.basename(a) in ("mscluster", "mscluster_cli") for a in argv)
    return own and "launch" in argv


def running_launcher(job_dir: str, hostname: Optional[str] = None) -> int:
    """The pid of the job's launcher, checked to be it.

    Raises:
        JobDirError: not a job folder, the job ended, its launcher runs on another host or is gone.
    """
    status = read_status(job_dir)  # raises for a folder that is not a job's
    entry = launcher_entry(job_dir)
    here = hostname or socket.gethostname()
    if status.state != "running":
        raise JobDirError(f"{job_dir}: the job is not running ({status.state}); nothing to stop")
    if not entry.get("pid"):
        raise JobDirError(f"{job_dir}: {STATUS_FILE} names no launcher; nothing to stop")
    if entry.get("host") != here:
        raise JobDirError(f"{job_dir}: its launcher (pid {entry.get('pid')}) runs on {entry.get('host')}, not here "
                          f"({here}); run mscluster stop there")
    pid = int(entry["pid"])
    if not _is_launcher(pid, float(entry.get("started_at") or 0)):
        raise JobDirError(f"{job_dir}: its launcher (pid {pid}) is gone; nothing to stop")
    return pid


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_job(job_dir: str, grace_period: float, say: Callable[[str], None] = lambda line: None,
             monotonic: Callable[[], float] = time.monotonic, poll_s: float = 0.2) -> str:
    """TERM the job's launcher, KILL it if it is still there after the grace period; how it ended.

    Raises:
        JobDirError: as running_launcher.
    """
    pid = running_launcher(job_dir)
    os.kill(pid, signal.SIGTERM)
    say(f"mscluster: sent SIGTERM to the launcher (pid {pid}); it stops every rank (grace period "
        f"{grace_period:g} s)")
    deadline = monotonic() + grace_period + STOP_MARGIN_S
    while monotonic() < deadline:
        if _gone(pid):
            return "stopped"
        time.sleep(poll_s)  # polling a process we do not parent: no wait() to block on
    if _is_launcher(pid, float(launcher_entry(job_dir).get("started_at") or 0)):
        os.kill(pid, signal.SIGKILL)
        say(f"mscluster: the launcher (pid {pid}) was still there; sent SIGKILL (its agents stop the ranks)")
        return "killed"
    return "stopped"


# -- a detached launch -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StartOutcome:
    """What the terminal waits for after ``launch --detach``: every rank started, or the launcher's end."""

    started: bool
    exit_code: Optional[int] = None  # the launcher ended first: its exit code


def every_rank_started(job_dir: str, launcher_pid: int) -> bool:
    """Whether this launcher's status.json has no process still pending (or the job already ended)."""
    live = read_json_object(os.path.join(job_dir, STATUS_FILE))
    if not live or (live.get("launcher") or {}).get("pid") != launcher_pid:
        return False  # not written yet, or an earlier launcher's (a resumed job)
    processes = live.get("processes") or {}
    return bool(processes) and all(p.get("state") != "pending" for p in processes.values())


def wait_started(job_dir: str, launcher_pid: int, exited: Callable[[], Optional[int]],
                 poll_s: float = 0.1) -> StartOutcome:
    """Wait until every rank of the detached launcher started, or the launcher exited."""
    while True:
        if every_rank_started(job_dir, launcher_pid):
            return StartOutcome(True)
        code = exited()
        if code is not None:
            return StartOutcome(every_rank_started(job_dir, launcher_pid), code)
        time.sleep(poll_s)


# -- the jobs of a workdir ---------------------------------------------------------------------------

@dataclass(frozen=True)
class JobRow:
    """One job folder as ``mscluster jobs`` lists it."""

    job_dir: str
    status: JobStatus
    launcher: Mapping[str, Any]


def list_jobs(workdir: str) -> list[JobRow]:
    """Every job folder directly under ``workdir``, oldest first.

    Raises:
        JobDirError: ``workdir`` is not a folder.
    """
    if not os.path.isdir(workdir):
        raise JobDirError(f"{workdir}: no such folder (give the workdir: of your cluster file)")
    rows = []
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name)
        if not any(os.path.isfile(os.path.join(path, f)) for f in (STATUS_FILE, RESULT_FILE)):
            continue
        try:
            rows.append(JobRow(path, read_status(path), launcher_entry(path)))
        except JobDirError:
            continue
    return sorted(rows, key=lambda r: (r.launcher.get("started_at") or 0, r.job_dir))


def format_jobs(rows: list[JobRow]) -> str:
    """What ``mscluster jobs`` prints."""
    if not rows:
        return "no jobs"
    table = [("job", "state", "ranks", "step", "started", "launcher")]
    for r in rows:
        ranks = sum(1 for p in r.status.ranks if p.rank is not None)
        lead = r.status.lead
        started = r.launcher.get("started_at")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if isinstance(started, (int, float)) else "-"
        table.append((r.job_dir, r.status.state, str(ranks),
                      "-" if lead is None or lead.global_step is None else str(lead.global_step), when,
                      f"{r.launcher.get('pid', '-')}@{r.launcher.get('host', '-')}"))
    return "\n".join(format_table(table))
