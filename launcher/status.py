"""A job's live state: written by the launcher to ``<job>/status.json``, read by ``mscluster status``.

The launcher is the one place that sees every rank of every host (the job folders of remote hosts
are their own disks), so its supervisor keeps the state file: ``StatusWriter`` gets each agent
event (process started, a line of output, exit) and rewrites ``status.json`` atomically (temporary
file + rename) whenever something a user would see changed. Progress comes from the lines the
ranks print anyway (``trainer.monitor.format_plain``, the eval and checkpoint lines).

``read_status`` combines that file with ``result.json`` (written once, when the launcher is done)
and whether the launcher process is still alive, so it answers while the job runs, after it
ended, and after a launcher that died without a word. Imports no MindSpore.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional

from launcher.errors import JobDirError
from launcher.protocol import AgentSpec

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
RESULT_FILE = "result.json"  # written by launcher.launch at the very end
VERSION = 1

# the trainer's lines this module understands (trainer/monitor.py, trainer/train.py print them)
PROGRESS_LINE = re.compile(r"^epoch=(\d+)/(\d+) step=(\d+)/(\d+) global_step=(\d+) loss=(\S+)"
                           r"(?: lr=\S+)?(?: img/s=([\d.]+))?")
EVAL_LINE = re.compile(r"^eval epoch=(\d+) top1=(\S+) loss=(\S+)")
RESUMED_LINE = re.compile(r"^resumed from (\S+) epoch=(\d+) step=(\d+)")
CHECKPOINT_LINE = re.compile(r"^checkpoint saved (\S+) epoch=(\d+) step=(\d+) global_step=(\d+)")

# process states
PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, LOST = "pending", "running", "succeeded", "failed", "stopped", "lost"


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def parse_line(line: str) -> dict[str, Any]:
    """What a rank's output line says about its progress (an empty dict for any other line)."""
    m = PROGRESS_LINE.match(line)
    if m:
        out: dict[str, Any] = {"epoch": int(m.group(1)), "epochs": int(m.group(2)), "step": int(m.group(3)),
                               "steps": int(m.group(4)), "global_step": int(m.group(5)), "loss": _number(m.group(6))}
        if m.group(7):
            out["img_per_s"] = float(m.group(7))
        return out
    m = EVAL_LINE.match(line)
    if m:
        return {"eval": {"epoch": int(m.group(1)), "top1": _number(m.group(2)), "loss": _number(m.group(3))}}
    m = CHECKPOINT_LINE.match(line)
    if m:
        return {"checkpoint": m.group(1)}
    m = RESUMED_LINE.match(line)
    if m:
        return {"resumed_from": m.group(1)}
    return {}


def write_json_atomic(path: str, payload: Mapping[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
        handle.write("\n")
    os.replace(tmp, path)


class StatusWriter:
    """Keeps ``<job>/status.json`` up to date during one attempt of a job.

    The file: ``{"version", "launcher": {"pid", "host", "started_at"}, "attempt", "state" (this
    attempt's: running | succeeded | failed | interrupted), "attempt_started_at", "updated_at",
    "world_size", "eval": {"epoch", "top1", "loss"}, "processes": {name: {"host", "rank", "state",
    "pid", "epoch", "epochs", "step", "steps", "global_step", "loss", "img_per_s", "exit_code",
    "signal", "log"}}}``. A later attempt of the same launcher keeps the last eval.

    A failure to write is logged once and never stops the job.
    """

    def __init__(self, job_dir: str, specs: Mapping[str, AgentSpec], attempt: int,
                 clock: Callable[[], float] = time.time):
        self.job_dir, self.path, self.clock = job_dir, os.path.join(job_dir, STATUS_FILE), clock
        self._warned = False
        now = clock()
        previous = _load_json(self.path) if attempt > 0 else None
        launcher = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": now}
        if previous and previous.get("launcher", {}).get("pid") == os.getpid():
            launcher = previous["launcher"]
        processes: dict[str, dict[str, Any]] = {}
        for host, spec in specs.items():
            for p in spec.processes:
                processes[p.name] = {"host": host, "rank": p.rank, "state": PENDING, "pid": None,
                                     "log": os.path.join("logs", _log_name(p.name))}
        self.data: dict[str, Any] = {
            "version": VERSION, "launcher": launcher, "attempt": attempt, "state": RUNNING,
            "attempt_started_at": now, "updated_at": now,
            "world_size": sum(1 for p in processes.values() if p["rank"] is not None),
            "eval": dict(previous.get("eval") or {}) if previous else {}, "processes": processes}
        self.write()

    def write(self) -> None:
        self.data["updated_at"] = self.clock()
        try:
            write_json_atomic(self.path, self.data)
        except OSError as exc:
            if not self._warned:
                logger.warning("%s: cannot write the job's status (%s); `mscluster status` will lag", self.path, exc)
                self._warned = True

    def on_event(self, host: str, ev: Mapping[str, Any], stopping: bool = False) -> None:
        """One agent event (launcher/protocol.py); rewrites the file when it changed what status shows."""
        kind = ev.get("ev")
        proc = self.data["processes"].get(ev.get("name", ""))
        if kind == "started" and proc is not None:
            proc.update(state=RUNNING, pid=ev.get("pid"))
        elif kind == "out" and proc is not None:
            facts = parse_line(str(ev.get("line", "")))
            if not facts:
                return
            evaluation = facts.pop("eval", None)
            if evaluation is not None:
                self.data["eval"] = evaluation
            proc.update(facts)
        elif kind == "exit" and proc is not None:
            code, sig = ev.get("code"), ev.get("signal")
            state = SUCCEEDED if code == 0 else (STOPPED if stopping else FAILED)
            proc.update(state=state, exit_code=code, signal=sig)
        elif kind in ("gone", "start_failed"):
            for p in self.data["processes"].values():
                if p["host"] == host and p["state"] in (PENDING, RUNNING):
                    p["state"] = LOST
        else:
            return
        self.write()

    def attempt_ended(self, ok: bool, interrupted: bool) -> None:
        self.data["state"] = SUCCEEDED if ok else ("interrupted" if interrupted else FAILED)
        for p in self.data["processes"].values():
            if p["state"] in (PENDING, RUNNING):
                p["state"] = SUCCEEDED if ok else STOPPED
        self.write()


def _log_name(name: str) -> str:
    return "scheduler.log" if name == "scheduler" else f"rank_{name[4:]}.log" if name.startswith("rank") else f"{name}.log"


def _load_json(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- reading ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankStatus:
    """One process of the job as ``status`` shows it."""

    name: str  # rank<N> | scheduler
    host: str
    rank: Optional[int]
    state: str
    pid: Optional[int] = None
    epoch: Optional[int] = None
    epochs: Optional[int] = None
    step: Optional[int] = None
    steps: Optional[int] = None
    global_step: Optional[int] = None
    loss: Optional[float] = None
    img_per_s: Optional[float] = None
    exit_code: Optional[int] = None
    signal: Optional[str] = None


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands, from its folder."""

    job_dir: str
    state: str  # running | succeeded | failed | interrupted
    attempt: int  # 0 = the first attempt
    max_attempts: Optional[int] = None  # restarts + 1, from cluster.yaml
    detail: str = ""  # e.g. "restarting after attempt 1 failed", "the launcher (pid 12) is gone"
    eval: dict[str, float] = field(default_factory=dict)
    ranks: tuple[RankStatus, ...] = ()
    updated_at: Optional[float] = None
    root_cause: Optional[dict[str, Any]] = None

    @property
    def lead(self) -> Optional[RankStatus]:
        """Rank 0 (its progress and loss stand for the job's)."""
        return next((r for r in self.ranks if r.rank == 0), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _launcher_alive(launcher: Mapping[str, Any]) -> Optional[bool]:
    """True/False when the launcher ran on this host; None when it cannot be told from here."""
    if launcher.get("host") != socket.gethostname() or not launcher.get("pid"):
        return None
    import psutil

    try:
        proc = psutil.Process(int(launcher["pid"]))
        # a recycled pid belongs to a process started after our launcher
        return proc.create_time() <= float(launcher.get("started_at", 0)) + 1.0 and \
            proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _max_attempts(job_dir: str) -> Optional[int]:
    import yaml

    try:
        with open(os.path.join(job_dir, "cluster.yaml"), encoding="utf-8") as handle:
            cluster = yaml.safe_load(handle)
        return int(cluster.get("restarts", 0)) + 1
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return None


def _int_or_none(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_status(job_dir: str) -> JobStatus:
    """The job's state from ``status.json``, ``result.json`` and the launcher's liveness.

    Raises:
        JobDirError: the folder is missing or holds neither file.
    """
    if not os.path.isdir(job_dir):
        raise JobDirError(f"{job_dir}: no such job folder")
    live = _load_json(os.path.join(job_dir, STATUS_FILE))
    result_path = os.path.join(job_dir, RESULT_FILE)
    result = _load_json(result_path)
    if live is None and result is None:
        raise JobDirError(f"{job_dir}: not a job folder (no {STATUS_FILE} or {RESULT_FILE}); "
                          f"give the folder `mscluster launch` printed")
    if live is not None and result is not None:
        # result.json of an earlier launch in this folder (a resumed job): the live file is newer
        started = float(live.get("launcher", {}).get("started_at", 0))
        if os.path.getmtime(result_path) < started:
            result = None
    ranks = []
    for name, p in sorted((live or {}).get("processes", {}).items(),
                          key=lambda kv: (kv[1].get("rank") is None, kv[1].get("rank") or 0)):
        ranks.append(RankStatus(
            name=name, host=str(p.get("host", "?")), rank=_int_or_none(p.get("rank")), state=str(p.get("state", "?")),
            pid=_int_or_none(p.get("pid")), epoch=_int_or_none(p.get("epoch")), epochs=_int_or_none(p.get("epochs")),
            step=_int_or_none(p.get("step")), steps=_int_or_none(p.get("steps")),
            global_step=_int_or_none(p.get("global_step")), loss=p.get("loss"), img_per_s=p.get("img_per_s"),
            exit_code=_int_or_none(p.get("exit_code")), signal=p.get("signal")))
    evaluation = dict((live or {}).get("eval") or {})
    max_attempts = _max_attempts(job_dir)
    if result is not None:
        attempts = result.get("attempts") or []
        root = next((a.get("root_cause") for a in reversed(attempts) if a.get("root_cause")), None)
        if result.get("eval"):
            evaluation = {**evaluation, **result["eval"]}
        return JobStatus(job_dir, str(result.get("status", "failed")), int(result.get("restarts", 0)), max_attempts,
                         "", evaluation, tuple(ranks), os.path.getmtime(result_path),
                         root if result.get("status") != "succeeded" else None)
    live = live or {}
    attempt, state = int(live.get("attempt", 0)), str(live.get("state", RUNNING))
    alive = _launcher_alive(live.get("launcher", {}))
    launcher = live.get("launcher", {})
    detail = ""
    if alive is False:
        detail = (f"the launcher (pid {launcher.get('pid')} on {launcher.get('host')}) is gone without "
                  f"writing {RESULT_FILE}")
        state = FAILED if state == RUNNING else state
    elif state != RUNNING:  # the attempt ended; the launcher decides on a restart or writes result.json
        detail = "finishing" if state == SUCCEEDED else f"restarting after attempt {attempt + 1} {state}"
        state = RUNNING
    elif alive is None:
        detail = f"the launcher runs on {launcher.get('host')}"
    return JobStatus(job_dir, state, attempt, max_attempts, detail, evaluation, tuple(ranks),
                     live.get("updated_at"))


# -- formatting (pure) -----------------------------------------------------------------------------

def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def _of(a: Optional[int], b: Optional[int]) -> str:
    return "-" if a is None else (f"{a}/{b}" if b is not None else str(a))


def format_status(status: JobStatus, now: Optional[float] = None) -> str:
    """What ``mscluster status`` prints."""
    now = time.time() if now is None else now
    attempt = f"attempt {status.attempt + 1}" + (f" of {status.max_attempts}" if status.max_attempts else "")
    lines = [f"job {status.job_dir}", f"  state:     {status.state} ({attempt})"
             + (f"; {status.detail}" if status.detail else "")]
    lead = status.lead
    if lead is not None and lead.global_step is not None:
        lines.append(f"  progress:  epoch {_of(lead.epoch, lead.epochs)}, step {_of(lead.step, lead.steps)} "
                     f"(global step {lead.global_step}), loss {_fmt(lead.loss, '.4f')}"
                     + (f", {lead.img_per_s:.1f} img/s" if lead.img_per_s is not None else ""))
    else:
        lines.append("  progress:  no step reported yet")
    if status.eval:
        e = status.eval
        lines.append(f"  last eval: epoch {_fmt(e.get('epoch'))}, top1 {_fmt(e.get('top1'), '.4f')}, "
                     f"loss {_fmt(e.get('loss'), '.4f')}")
    else:
        lines.append("  last eval: none yet")
    if status.root_cause:
        rc = status.root_cause
        outcome = rc.get("signal") or f"exit {rc.get('exit_code')}"
        lines.append(f"  root cause: {rc.get('name')} on {rc.get('host')} ({outcome}): "
                     f"{str(rc.get('message') or '').splitlines()[0] if rc.get('message') else ''}".rstrip(": "))
    if status.updated_at is not None:
        lines.append(f"  updated:   {max(now - status.updated_at, 0):.0f} s ago")
    if status.ranks:
        rows = [("rank", "host", "state", "pid", "epoch", "step", "global", "loss")]
        for r in status.ranks:
            state = r.state
            if r.state in (FAILED, STOPPED) and (r.exit_code is not None or r.signal):
                state += f" ({r.signal or f'exit {r.exit_code}'})"
            rows.append(("sched" if r.rank is None else str(r.rank), r.host, state, _fmt(r.pid), _of(r.epoch, r.epochs),
                         _of(r.step, r.steps), _fmt(r.global_step), _fmt(r.loss, ".4f")))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)
