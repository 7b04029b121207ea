"""Run one attempt of a job: an agent per host, every line relayed, all stopped at the first failure.

State of an attempt (torchelastic's WorkerState, reduced to what we need):

    STARTING -> RUNNING -> SUCCEEDED                 every process of every host exited 0
                       \\-> STOPPING -> FAILED       a rank failed, a host's agent or SSH session
                                                    ended early, or the user pressed Ctrl-C

STOPPING closes every agent's stdin; each agent then stops its processes (TERM to the process
group, a grace period, KILL) and exits. An agent that does not exit within its grace period plus
a margin is cut off (its SSH channel closed, or its process group killed locally), which also
makes it stop its ranks. The executors are passed in, so the same code runs local and SSH hosts.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Mapping, Optional, TextIO

from launcher.executor import Executor, Session
from launcher.protocol import AgentSpec, parse_event
from launcher.report import RankFailure, traceback_tail
from launcher.status import StatusWriter

logger = logging.getLogger(__name__)

EVAL_LINE = re.compile(r"^eval epoch=(\d+) top1=([-\d.eE]+|nan) loss=([-\d.eE]+|nan|inf)")
STOP_MARGIN_S = 15.0
OUTPUT_TAIL = 30


@dataclass
class AttemptResult:
    """How one attempt ended."""

    ok: bool
    failures: list[RankFailure] = field(default_factory=list)
    eval: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    started_at: float = 0.0
    ended_at: float = 0.0


class LogSink:
    """Writes each process's lines to its log file, and as ``[host:rank] line`` to the console and ``all.log``.

    ``all.log`` holds every process's lines in the order the launcher received them: the job's
    log merged by time (one clock, the launcher's), what ``mscluster logs JOB`` shows.
    """

    ALL = "all.log"

    def __init__(self, logs_dir: str, console: Optional[TextIO], attempt: int):
        self.logs_dir, self.console, self.attempt = logs_dir, console, attempt
        self._files: dict[str, TextIO] = {}
        self._lock = threading.Lock()
        os.makedirs(logs_dir, exist_ok=True)
        self._all: Optional[TextIO] = None

    @staticmethod
    def file_name(name: str) -> str:
        return "scheduler.log" if name == "scheduler" else f"rank_{name[4:]}.log" if name.startswith("rank") else f"{name}.log"

    def path(self, name: str) -> str:
        return os.path.join(self.logs_dir, self.file_name(name))

    def _handle(self, name: str) -> TextIO:
        handle = self._files.get(name)
        if handle is None:
            handle = self._files[name] = open(self.path(name), "a", encoding="utf-8")
            if self.attempt:
                handle.write(f"===== mscluster: attempt {self.attempt} (restart {self.attempt}) =====\n")
                handle.flush()
        return handle

    def open(self, name: str) -> None:
        """Create the log of a process that just started (even one that never prints)."""
        with self._lock:
            self._handle(name)

    def write(self, host: str, name: str, line: str) -> None:
        label = name[4:] if name.startswith("rank") else ("sched" if name == "scheduler" else name)
        with self._lock:
            handle = self._handle(name)
            handle.write(line + "\n")
            handle.flush()
            if self._all is None:
                self._all = open(os.path.join(self.logs_dir, self.ALL), "a", encoding="utf-8")
                if self.attempt:
                    self._all.write(f"===== mscluster: attempt {self.attempt} (restart {self.attempt}) =====\n")
            self._all.write(f"[{host}:{label}] {line}\n")
            self._all.flush()
            if self.console is not None:
                self.console.write(f"[{host}:{label}] {line}\n")
                self.console.flush()

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()
            if self._all is not None:
                self._all.close()
                self._all = None


@dataclass
class _Host:
    spec: AgentSpec
    executor: Executor
    session: Optional[Session] = None
    done: bool = False
    gone: bool = False


class Supervisor:
    """Runs one attempt across every host and returns how it ended."""

    def __init__(self, specs: Mapping[str, AgentSpec], executors: Mapping[str, Executor],
                 agent_argv: Callable[[str], list[str]], agent_cwd: Callable[[str], Optional[str]],
                 sink: LogSink, attempt: int = 0):
        self.hosts = {h: _Host(spec, executors[h]) for h, spec in specs.items()}
        self.agent_argv, self.agent_cwd, self.sink, self.attempt = agent_argv, agent_cwd, sink, attempt
        self.events: "queue.Queue[tuple[str, dict]]" = queue.Queue()
        self.tails: dict[str, Deque[str]] = collections.defaultdict(lambda: collections.deque(maxlen=OUTPUT_TAIL))
        self.stopping_since: Optional[float] = None
        self.result = AttemptResult(ok=False, started_at=time.time())
        self._proc_info = {(h, p.name): p for h, host in self.hosts.items() for p in host.spec.processes}
        # <job>/status.json for `mscluster status` (the sink's logs_dir is <job>/logs)
        self.status = StatusWriter(os.path.dirname(os.path.abspath(sink.logs_dir)), specs, attempt)

    # -- starting ----------------------------------------------------------------------------------
    def _start(self, name: str, host: _Host) -> None:
        try:
            # the job dir in the agent's environment lets anyone find every process of a job
            session = host.executor.start(self.agent_argv(name), env={"MSCLUSTER_JOB_DIR": host.spec.job_dir},
                                          cwd=self.agent_cwd(name),
                                          on_stderr=lambda line, n=name: self.events.put((n, {"ev": "stderr", "line": line})))
            host.session = session
            session.write(host.spec.to_json() + "\n")
            if self.stopping_since is not None:  # stop() ran before this session existed
                session.close_stdin()
        except Exception as exc:  # noqa: BLE001 - any failure to start is this host's failure, reported once
            self.events.put((name, {"ev": "start_failed", "message": f"could not start the agent on {name}: {exc}"}))
            return
        for line in session.lines():
            self.events.put((name, parse_event(line) or {"ev": "stderr", "line": line}))
        self.events.put((name, {"ev": "gone", "code": session.wait(timeout=30)}))

    # -- stopping ----------------------------------------------------------------------------------
    def stop(self, why: str) -> None:
        if self.stopping_since is not None:
            return
        self.stopping_since = time.monotonic()
        logger.warning("stopping every rank: %s", why)
        for host in self.hosts.values():
            if host.session is not None:
                host.session.close_stdin()

    def _cut_off_stragglers(self) -> None:
        grace = max(h.spec.grace_period for h in self.hosts.values())
        if self.stopping_since is None or time.monotonic() - self.stopping_since < grace + STOP_MARGIN_S:
            return
        for name, host in self.hosts.items():
            if not host.gone and host.session is not None:
                logger.warning("%s: agent did not stop within %.0f s; cutting it off", name, grace + STOP_MARGIN_S)
                host.session.kill()
        self.stopping_since = time.monotonic()  # give the cut-off its own margin

    # -- events ------------------------------------------------------------------------------------
    def _on_exit(self, host: str, ev: dict) -> None:
        name = ev["name"]
        proc = self._proc_info.get((host, name))
        if ev.get("code") == 0:
            return
        message, tb = traceback_tail(ev.get("error"), list(self.tails[f"{host}/{name}"]))
        failure = RankFailure(host=host, name=name, rank=ev.get("rank"),
                              device_id=proc.device_id if proc else None, exit_code=ev.get("code"),
                              signal=ev.get("signal"), time=float(ev.get("time") or time.time()),
                              log_path=self.sink.path(name), message=message, traceback_tail=tb,
                              during_teardown=self.stopping_since is not None, attempt=self.attempt)
        self.result.failures.append(failure)
        self.stop(f"{name} on {host} ended with {failure.outcome()}")

    def _on_gone(self, host: str, ev: dict) -> None:
        state = self.hosts[host]
        state.gone = True
        if state.done:
            return
        stderr = state.session.stderr_tail(8) if state.session is not None else []
        message = ev.get("message") or f"the agent on {host} ended without reporting (exit code {ev.get('code')})"
        self.result.failures.append(RankFailure(
            host=host, name="agent", rank=None, device_id=None, exit_code=ev.get("code"), signal=None,
            time=time.time(), log_path=None, message=message, traceback_tail=tuple(stderr),
            during_teardown=self.stopping_since is not None, attempt=self.attempt))
        self.stop(f"lost the agent on {host}")

    def _handle(self, host: str, ev: dict) -> None:
        kind = ev.get("ev")
        self.status.on_event(host, ev, stopping=self.stopping_since is not None)
        if kind == "out":
            name, line = ev["name"], ev["line"]
            self.tails[f"{host}/{name}"].append(line)
            self.sink.write(host, name, line)
            if name == "rank0":
                match = EVAL_LINE.match(line)
                if match:
                    self.result.eval = {"epoch": int(match.group(1)), "top1": float(match.group(2)),
                                        "loss": float(match.group(3))}
        elif kind == "started":
            self.sink.open(ev["name"])
        elif kind == "exit":
            self._on_exit(host, ev)
        elif kind == "done":
            self.hosts[host].done = True
            if not ev.get("ok") and self.stopping_since is None:
                self.stop(f"the agent on {host} reported a failure")
        elif kind == "stderr":
            self.sink.write(host, "agent", ev["line"])
        elif kind in ("gone", "start_failed"):
            self._on_gone(host, ev)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> AttemptResult:
        threads = [threading.Thread(target=self._start, args=(name, host), daemon=True, name=f"agent-{name}")
                   for name, host in self.hosts.items()]
        for t in threads:
            t.start()
        try:
            while not all(h.gone for h in self.hosts.values()):
                self._cut_off_stragglers()  # every turn: a chatty host must not postpone it
                try:
                    host, ev = self.events.get(timeout=0.5)
                except queue.Empty:
                    continue
                self._handle(host, ev)
        except KeyboardInterrupt:
            self.result.interrupted = True
            self.stop("interrupted (Ctrl-C)")
            self._drain_after_interrupt()
        finally:
            if not all(h.gone for h in self.hosts.values()):
                self.stop("the launcher is exiting")
            self.sink.close()
        self.result.ended_at = time.time()
        self.result.ok = (not self.result.failures and not self.result.interrupted
                          and all(h.done for h in self.hosts.values()))
        self.status.attempt_ended(self.result.ok, self.result.interrupted)
        return self.result

    def _drain_after_interrupt(self) -> None:
        """After Ctrl-C: keep relaying until every agent has stopped its ranks (a second Ctrl-C cuts off)."""
        while not all(h.gone for h in self.hosts.values()):
            try:
                host, ev = self.events.get(timeout=0.5)
            except queue.Empty:
                self._cut_off_stragglers()
                continue
            except KeyboardInterrupt:
                for h in self.hosts.values():
                    if h.session is not None and not h.gone:
                        h.session.kill()
                continue
            self._handle(host, ev)
