"""A job's live state: written by the launcher to ``<job>/status.json``, read by ``mscluster status``.

The launcher is the one place that sees every rank of every host (the job folders of remote hosts
are their own disks), so its supervisor keeps the state file: ``StatusWriter`` gets each agent
message (process started, an event it sent, exit) and rewrites ``status.json`` atomically
whenever something a user would see changed. Progress, evaluations and checkpoints come from the
typed events ranks send with ``mscluster.rank.report*``; nothing is parsed from their output.

``read_status`` combines that file with ``result.json`` (written once, when the launcher is done)
and whether the launcher process is still alive, so it answers while the job runs, after it
ended, and after a launcher that died without a word. Imports no MindSpore.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional

from launcher.errors import JobDirError
from launcher.lifecycle import AttemptState, JobState, ProcessState
from mscluster.fsutil import write_json_atomic
from launcher.protocol import AgentMessage, AgentSpec, Exited, Relayed, Started
from launcher.statushtml import STATUS_HTML, render_status_html
from mscluster.fsutil import read_json_object, write_atomic
from launcher.table import format_table
from mscluster import events, jobfiles

logger = logging.getLogger(__name__)

STATUS_FILE = jobfiles.STATUS_FILE
RESULT_FILE = jobfiles.RESULT_FILE  # written by launcher.launch at the very end
HTML_EVERY_S = 2.0  # status.html's throttle while a job runs (status.json's is the writer's `every`)
VERSION = 2

# process states (launcher.lifecycle documents them once; the names stay for their readers)
PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, LOST = (ProcessState.PENDING, ProcessState.RUNNING, ProcessState.SUCCEEDED,
                                                      ProcessState.FAILED, ProcessState.STOPPED, ProcessState.LOST)

# scalars of a progress event that status shows in its own columns (the built-in trainer sends them)
FIRST_METRICS = ("top1", "loss")  # an evaluation's metrics are shown in this order, then by name
EPOCHS, STEP_IN_EPOCH, STEPS_PER_EPOCH, IMG_PER_S = "epochs", "step_in_epoch", "steps_per_epoch", "img_per_s"


def progress_fields(event: events.Progress) -> dict[str, Any]:
    """What one progress event sets in a process's status entry."""
    scalars = dict(event.scalars)

    def count(name: str) -> Optional[int]:
        value = scalars.get(name)
        return int(value) if value is not None and math.isfinite(value) else None

    return {"global_step": event.step, "epoch": event.epoch, "loss": event.loss, "epochs": count(EPOCHS),
            "step": count(STEP_IN_EPOCH), "steps": count(STEPS_PER_EPOCH), "img_per_s": scalars.get(IMG_PER_S),
            "scalars": scalars, "progress_at": event.time}


class StatusWriter:
    """Keeps ``<job>/status.json`` up to date during one attempt of a job.

    The file: ``{"version", "launcher": {"pid", "host", "started_at"}, "attempt", "state" (this
    attempt's: running | succeeded | failed | interrupted), "attempt_started_at", "updated_at",
    "world_size", "eval": {"epoch", <metric>: value}, "processes": {name: {"host", "rank", "state",
    "pid", "global_step", "epoch", "epochs", "step", "steps", "loss", "img_per_s", "scalars",
    "progress_at", "checkpoint", "checkpoint_step", "exit_code", "signal", "log"}}, "stragglers": [{"host",
    "rank", "relative", "individual", "since_step", "since"}] (once a rank was named: launcher.stragglers)}``, every
    field from the typed events the ranks send (``mscluster.events``): nothing is read from what
    they print. A later attempt of the same launcher keeps the last eval.

    A failure to write is logged once and never stops the job.

    ``every``: the least seconds between two rewrites while the job runs. A fleet's ranks send
    thousands of events a second and the file lists every rank, so rewriting it per event grows
    with the square of the ranks (at 64 ranks it was half the launcher's CPU); with ``every`` a
    change waits until `flush` finds the interval passed. The end of an attempt is written at
    once.
    """

    def __init__(self, job_dir: str, specs: Mapping[str, AgentSpec], attempt: int,
                 clock: Callable[[], float] = time.time, every: float = 0.0,
                 monotonic: Callable[[], float] = time.monotonic, hosts: Optional[Mapping[str, Any]] = None):
        self.job_dir, self.path, self.clock = job_dir, os.path.join(job_dir, STATUS_FILE), clock
        self.every, self.monotonic = every, monotonic
        self._warned = False
        self._pending = False
        self._written_at = float("-inf")
        self._html_at = float("-inf")
        now = clock()
        previous = read_json_object(self.path) if attempt > 0 else None
        launcher = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": now}
        if previous and previous.get("launcher", {}).get("pid") == os.getpid():
            launcher = previous["launcher"]
        processes: dict[str, dict[str, Any]] = {}
        for host, spec in specs.items():
            for p in spec.processes:
                processes[p.name] = {"host": host, "rank": p.rank, "state": PENDING, "pid": None,
                                     "log": os.path.join(jobfiles.LOGS_DIR, jobfiles.log_name(p.name))}
        self.data: dict[str, Any] = {
            "version": VERSION, "launcher": launcher, "attempt": attempt, "state": AttemptState.RUNNING.value,
            "attempt_started_at": now, "updated_at": now,
            "world_size": sum(1 for p in processes.values() if p["rank"] is not None),
            "eval": dict(previous.get("eval") or {}) if previous else {}, "processes": processes}
        if hosts is not None:  # the job's active hosts, spares and exclusions (launcher.hostpool)
            self.data["hosts"] = dict(hosts)
        self.write()

    def write(self) -> None:
        self._pending = False
        self._written_at = self.monotonic()
        self.data["updated_at"] = self.clock()
        try:
            write_json_atomic(self.path, self.data, mode=0o600)
            # the picture of the same data (launcher.statushtml): at most every HTML_EVERY_S while the job runs
            # (1,024 ranks render in ~75 ms, and the page reloads itself every 5 s), and at every end
            if (self.every <= 0 or self.data["state"] != AttemptState.RUNNING.value
                    or self._written_at - self._html_at >= HTML_EVERY_S):
                self._html_at = self._written_at
                write_atomic(os.path.join(self.job_dir, STATUS_HTML), render_status_html(self.data, now=self.clock()),
                             mode=0o600)
        except OSError as exc:
            if not self._warned:
                logger.warning("%s: cannot write the job's status (%s); `mscluster status` will lag", self.path, exc)
                self._warned = True

    def on_message(self, host: str, msg: AgentMessage, stopping: bool = False) -> None:
        """One agent message (launcher/protocol.py); rewrites the file when it changed what status shows."""
        proc = self.data["processes"].get(getattr(msg, "name", ""))
        if proc is None:
            return
        if isinstance(msg, Started):
            proc.update(state=RUNNING, pid=msg.pid)
        elif isinstance(msg, Relayed):
            event = msg.event
            if isinstance(event, events.Beat):
                return  # liveness is the watchdog's; status shows steps
            if isinstance(event, events.Progress):
                before_step, before_at = proc.get("global_step"), proc.get("progress_at")
                proc.update(progress_fields(event))
                if isinstance(before_step, int) and isinstance(before_at, (int, float)) and event.step > before_step:
                    proc["step_s"] = round((event.time - before_at) / (event.step - before_step), 6)
            elif isinstance(event, events.Eval):
                self.data["eval"] = {"epoch": event.epoch, **event.metrics}
            elif isinstance(event, events.Checkpoint):
                proc.update(checkpoint=event.path, checkpoint_step=event.step)
            elif isinstance(event, events.Finished):
                proc.update(finished=True)
        elif isinstance(msg, Exited):
            # a crash after the rank said it finished (the framework's teardown) is not its failure
            state = SUCCEEDED if msg.code == 0 or proc.get("finished") else (STOPPED if stopping else FAILED)
            proc.update(state=state, exit_code=msg.code, signal=msg.signal)
        else:
            return
        self._pending = True
        self.flush()

    def set_watchdog(self, in_force: Mapping[str, Any]) -> None:
        """The watchdog's limits in force now (``launcher.stall.StallWatch.in_force``)."""
        if self.data.get("watchdog") != in_force:
            self.data["watchdog"] = dict(in_force)
            self._pending = True

    def set_stragglers(self, named: list[dict[str, Any]]) -> None:
        """The ranks named stragglers now (``launcher.stragglers.StragglerScore.to_dict``)."""
        if self.data.get("stragglers", []) != named:
            self.data["stragglers"] = list(named)
            self._pending = True

    def flush(self) -> None:
        """Write the changes not yet in the file, if ``every`` seconds have passed since the last write."""
        if self._pending and self.monotonic() - self._written_at >= self.every:
            self.write()

    def host_lost(self, host: str, orderly: bool = False) -> None:
        """The agent of ``host`` is gone: its processes that had not ended are lost; or, when it ended in
        order (it said Done, having reported every process it started), never started: a stop came first."""
        for p in self.data["processes"].values():
            if p["host"] == host and p["state"] in (PENDING, RUNNING):
                p["state"] = STOPPED if orderly and p["state"] == PENDING else LOST
        self._pending = True  # every agent ends this way: 64 hosts were 64 rewrites in a row
        self.flush()

    def attempt_ended(self, ok: bool, interrupted: bool, preempted: bool = False,
                      interrupted_by: Optional[str] = None) -> None:
        state = (AttemptState.SUCCEEDED if ok else AttemptState.INTERRUPTED if interrupted
                 else AttemptState.PREEMPTED if preempted else AttemptState.FAILED)
        self.ended(state, interrupted_by)

    def ended(self, state: AttemptState, interrupted_by: Optional[str] = None) -> None:
        """The attempt ended in ``state``: written at once; processes not ended are succeeded or stopped."""
        self.data["state"] = state.value
        if state is AttemptState.INTERRUPTED and interrupted_by:
            self.data["interrupted_by"] = interrupted_by  # SIGINT (Ctrl-C), SIGTERM, SIGHUP
        for p in self.data["processes"].values():
            if p["state"] in (PENDING, RUNNING):
                p["state"] = SUCCEEDED if state is AttemptState.SUCCEEDED else STOPPED
        self.write()


def write_status_html(job_dir: str) -> None:
    """Rewrite ``<job>/status.html`` from status.json and result.json (the job's end: attempts, goodput)."""
    live = read_json_object(os.path.join(job_dir, STATUS_FILE))
    if live is None:
        return
    try:
        write_atomic(os.path.join(job_dir, STATUS_HTML),
                     render_status_html(live, read_json_object(os.path.join(job_dir, RESULT_FILE))), mode=0o600)
    except OSError as exc:
        logger.warning("%s: cannot write %s (%s)", job_dir, STATUS_HTML, exc.strerror or exc)


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
    checkpoint: Optional[str] = None


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands, from its folder."""

    job_dir: str
    state: str  # a launcher.lifecycle.JobState: running | succeeded | failed | interrupted | preempted
    attempt: int  # 0 = the first attempt
    max_attempts: Optional[int] = None  # restarts + 1, from cluster.yaml
    detail: str = ""  # e.g. "restarting after attempt 1 failed", "the launcher (pid 12) is gone"
    eval: dict[str, float] = field(default_factory=dict)
    ranks: tuple[RankStatus, ...] = ()
    updated_at: Optional[float] = None
    root_cause: Optional[dict[str, Any]] = None
    watchdog: Optional[dict[str, Any]] = None  # the limits in force (status.json's "watchdog")
    stragglers: tuple[dict[str, Any], ...] = ()  # the ranks named stragglers (status.json's "stragglers")
    hosts: Optional[dict[str, Any]] = None  # active, spares, excluded (launcher.hostpool.HostPool.to_dict)

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
    live = read_json_object(os.path.join(job_dir, STATUS_FILE))
    result_path = os.path.join(job_dir, RESULT_FILE)
    result = read_json_object(result_path)
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
            exit_code=_int_or_none(p.get("exit_code")), signal=p.get("signal"), checkpoint=p.get("checkpoint")))
    evaluation = dict((live or {}).get("eval") or {})
    named = (live or {}).get("stragglers")
    stragglers = tuple(s for s in named if isinstance(s, dict)) if isinstance(named, list) else ()
    max_attempts = _max_attempts(job_dir)
    pool = (result or {}).get("hosts") if isinstance((result or {}).get("hosts"), dict) else (live or {}).get("hosts")
    pool = pool if isinstance(pool, dict) else None
    if result is not None:
        attempts = result.get("attempts") or []
        root = next((a.get("root_cause") for a in reversed(attempts) if a.get("root_cause")), None)
        if result.get("eval"):
            evaluation = {**evaluation, **result["eval"]}
        return JobStatus(job_dir, _job_state(result.get("status")), int(result.get("restarts", 0)), max_attempts,
                         "", evaluation, tuple(ranks), os.path.getmtime(result_path),
                         root if result.get("status") != JobState.SUCCEEDED else None, stragglers=stragglers,
                         hosts=pool)
    live = live or {}
    attempt, state = int(live.get("attempt", 0)), str(live.get("state", AttemptState.RUNNING))
    alive = _launcher_alive(live.get("launcher", {}))
    launcher = live.get("launcher", {})
    detail = ""
    if alive is False:
        detail = (f"the launcher (pid {launcher.get('pid')} on {launcher.get('host')}) is gone without "
                  f"writing {RESULT_FILE}")
        state = JobState.FAILED if state == AttemptState.RUNNING else state
    elif state != AttemptState.RUNNING:  # the attempt ended; the launcher decides on a restart or writes result.json
        detail = "finishing" if state == AttemptState.SUCCEEDED else f"restarting after attempt {attempt + 1} {state}"
        state = JobState.RUNNING
    elif alive is None:
        detail = f"the launcher runs on {launcher.get('host')}"
    watch = live.get("watchdog")
    return JobStatus(job_dir, state, attempt, max_attempts, detail, evaluation, tuple(ranks),
                     live.get("updated_at"), watchdog=watch if isinstance(watch, dict) else None,
                     stragglers=stragglers, hosts=pool)


def _job_state(raw: Any) -> str:
    """A job state read from result.json (a word this version does not know is shown as it is)."""
    try:
        return JobState(raw)
    except ValueError:
        return str(raw) if isinstance(raw, str) else JobState.FAILED


# -- formatting (pure) -----------------------------------------------------------------------------

def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def _of(a: Optional[int], b: Optional[int]) -> str:
    return "-" if a is None else (f"{a}/{b}" if b is not None else str(a))


def _host_lines(hosts: Optional[Mapping[str, Any]], now: float) -> list[str]:
    """The spares standing by and the hosts excluded (status.json's or result.json's "hosts")."""
    if not hosts:
        return []
    spares = [str(s) for s in hosts.get("spares") or []]
    lines = [f"  spares:    {', '.join(spares)} standing by"] if spares else []
    for e in hosts.get("excluded") or []:
        if not isinstance(e, dict):
            continue
        until = e.get("until")
        left = f"cooldown ends in {until - now:.0f} s" if isinstance(until, (int, float)) and until > now \
            else "cooldown over"
        by = f" by attempt {e['attempt'] + 1}" if isinstance(e.get("attempt"), int) else " at the start"
        lines.append(f"  excluded:  {e.get('label') or e.get('host')} ({e.get('why')}{by}: {e.get('detail')}); {left}")
    for c in hosts.get("changes") or []:
        if isinstance(c, dict) and c.get("move") == "replaced" and c.get("spare"):
            lines.append(f"  replaced:  {c.get('label') or c.get('host')} -> {c.get('spare')}")
        elif isinstance(c, dict) and c.get("move") == "shrunk":
            lines.append(f"  shrunk:    {c.get('label') or c.get('host')} left out")
    return lines


def format_status(status: JobStatus, now: Optional[float] = None) -> str:
    """What ``mscluster status`` prints."""
    now = time.time() if now is None else now
    attempt = f"attempt {status.attempt + 1}" + (f" of {status.max_attempts}" if status.max_attempts else "")
    lines = [f"job {status.job_dir}", f"  state:     {status.state} ({attempt})"
             + (f"; {status.detail}" if status.detail else "")]
    lead = status.lead
    if lead is not None and lead.global_step is not None:
        if lead.step is not None:
            where = (f"epoch {_of(lead.epoch, lead.epochs)}, step {_of(lead.step, lead.steps)} "
                     f"(global step {lead.global_step})")
        else:
            where = (f"epoch {_of(lead.epoch, lead.epochs)}, " if lead.epoch is not None else "") + \
                f"step {lead.global_step}"
        lines.append(f"  progress:  {where}" + (f", loss {lead.loss:.4f}" if lead.loss is not None else "")
                     + (f", {lead.img_per_s:.1f} img/s" if lead.img_per_s is not None else ""))
    else:
        lines.append("  progress:  no step reported yet")
    if status.eval:
        metrics = {k: v for k, v in status.eval.items() if k != "epoch"}
        shown = ", ".join(f"{k} {_fmt(v, '.4f')}" for k, v in sorted(metrics.items(),
                                                                       key=lambda kv: (FIRST_METRICS.index(kv[0]) if kv[0] in FIRST_METRICS else len(FIRST_METRICS), kv[0])))
        lines.append(f"  last eval: epoch {_fmt(status.eval.get('epoch'))}" + (f", {shown}" if shown else ""))
    else:
        lines.append("  last eval: none yet")
    if status.root_cause:
        rc = status.root_cause
        outcome = rc.get("signal") or f"exit {rc.get('exit_code')}"
        lines.append(f"  root cause: {rc.get('name')} on {rc.get('host')} ({outcome}): "
                     f"{str(rc.get('message') or '').splitlines()[0] if rc.get('message') else ''}".rstrip(": "))
    if status.watchdog and isinstance(status.watchdog.get("limits"), dict):
        w = status.watchdog
        limits = ", ".join(f"{k} {_fmt(v, 'g')} s" for k, v in w["limits"].items() if isinstance(v, (int, float)))
        lines.append(f"  watchdog:  stall_timeout {w.get('stall_timeout')}: {limits}; "
                     f"frozen after {_fmt(w.get('frozen_after'), 'g')} s without a beat")
    for s in status.stragglers:
        relative = s.get("relative")
        lines.append(f"  straggler: rank {_fmt(s.get('rank'))} on {_fmt(s.get('host'))} at "
                     f"{_fmt(relative, '.2f') if isinstance(relative, (int, float)) else '?'} of the fastest rank's "
                     f"speed since step {_fmt(s.get('since_step'))}")
    lines += _host_lines(status.hosts, now)
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
        lines.extend(format_table(rows))
    return "\n".join(lines)
