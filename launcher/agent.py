"""The per-host agent: starts this host's ranks, relays their output, and stops them all on demand.

Run as ``python -m launcher.agent`` by the launcher (locally or over SSH). It reads its AgentSpec
from the first line of stdin and then watches stdin: EOF means the launcher wants the job stopped,
has died, or lost its SSH connection, and in every case the agent stops its processes (TERM to
each process group, a grace period, KILL) before it exits, so no rank outlives its launcher. A
rank that fails stops this host's other processes at once; the launcher stops the other hosts.

Each process runs in its own session (its pid is its process group) with PR_SET_PDEATHSIG, so
that even a SIGKILLed agent takes its ranks with it. Imports no MindSpore.
"""
from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Optional

from launcher.protocol import AgentSpec, ProcessSpec, event, split_cpus

ERROR_FILE_ENV = "MSCLUSTER_ERROR_FILE"
_PR_SET_PDEATHSIG = 1


@dataclass
class Running:
    spec: ProcessSpec
    proc: subprocess.Popen
    error_file: str
    reader: Optional[threading.Thread] = None


class Agent:
    """Runs one host's processes for one attempt of a job."""

    def __init__(self, spec: AgentSpec, out: IO[str]):
        self.spec = spec
        self.out = out
        self._out_lock = threading.Lock()
        self.running: list[Running] = []
        self.exits: "queue.Queue[Running]" = queue.Queue()
        self.stopping = threading.Event()

    # -- output ------------------------------------------------------------------------------------
    def emit(self, kind: str, **fields) -> None:
        line = event(kind, **fields)
        with self._out_lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.stopping.set()  # nobody listens any more: stop the job

    # -- start -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        os.makedirs(self.spec.job_dir, exist_ok=True)
        os.makedirs(os.path.join(self.spec.job_dir, "errors"), exist_ok=True)
        for rel, content in self.spec.files:
            path = os.path.join(self.spec.job_dir, rel)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.replace(tmp, path)

    def _cpus(self, p: ProcessSpec) -> Optional[tuple[int, ...]]:
        if p.cpus is not None:
            return p.cpus or None
        if not self.spec.bind_cores or p.rank is None:
            return None
        return split_cpus(sorted(os.sched_getaffinity(0)), p.local_rank, p.local_size) or None

    def start_all(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for p in self.spec.processes:
            if self.stopping.is_set():
                return
            error_file = os.path.abspath(os.path.join(self.spec.job_dir, "errors",
                                                      f"{p.name}.attempt{self.spec.attempt}.json"))
            if os.path.exists(error_file):
                os.remove(error_file)
            cpus = self._cpus(p)

            def preexec(cpus=cpus) -> None:  # runs in the child, before exec: no MindSpore yet
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if cpus:
                    os.sched_setaffinity(0, cpus)

            env = {**os.environ, **dict(p.env), ERROR_FILE_ENV: error_file, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(list(p.argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec,
                                    cwd=os.getcwd())
            run = Running(p, proc, error_file)
            run.reader = threading.Thread(target=self._relay, args=(run,), daemon=True)
            self.running.append(run)
            self.emit("started", name=p.name, pid=proc.pid, cpus=list(cpus) if cpus else None)
            run.reader.start()

    def _relay(self, run: Running) -> None:
        for raw in iter(run.proc.stdout.readline, b""):  # type: ignore[union-attr]
            self.emit("out", name=run.spec.name, line=raw.decode("utf-8", "replace").rstrip("\r\n"))
        run.proc.wait()
        self.exits.put(run)

    # -- stop --------------------------------------------------------------------------------------
    def stop_all(self) -> None:
        """TERM every live process group, wait the grace period, KILL what is left."""
        live = [r for r in self.running if r.proc.poll() is None]
        for r in live:
            _signal_group(r.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.spec.grace_period
        for r in live:
            try:
                r.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
        _kill_groups([r.proc.pid for r in self.running])  # even if a leader exited: children may linger

    def _report(self, run: Running) -> None:
        code = run.proc.returncode
        error = None
        try:
            with open(run.error_file, encoding="utf-8") as handle:
                error = json.load(handle)
        except (OSError, ValueError):
            pass
        self.emit("exit", name=run.spec.name, rank=run.spec.rank,
                  code=code if code is None or code >= 0 else None,
                  signal=_signal_name(-code) if code is not None and code < 0 else None,
                  time=time.time(), error=error)

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        self.prepare()
        self.start_all()
        pending = len(self.running)
        ok = pending == len(self.spec.processes)  # stopped before everything started: not a success
        while pending:
            try:
                run = self.exits.get(timeout=0.2)
            except queue.Empty:
                if self.stopping.is_set():
                    self.stop_all()
                    self.stopping.clear()
                    ok = False
                continue
            if run.reader is not None:
                run.reader.join()
            pending -= 1
            self._report(run)
            if run.proc.returncode != 0 and ok:
                ok = False
                self.stop_all()  # one failed: the others of this host go too
        _kill_groups([r.proc.pid for r in self.running])  # leftovers (children) of ranks, if any
        self.emit("done", ok=ok)
        return 0 if ok else 1


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name in the enum
        return f"SIG{number}"


def _kill_groups(pgids: list[int], timeout: float = 5.0) -> None:
    """KILL every process group still alive and wait until none is, so "done" means gone."""
    alive = [g for g in pgids if _group_alive(g)]
    for pgid in alive:
        _signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        alive = [g for g in alive if _group_alive(g)]
        if alive:
            time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _watch_stdin(stream: IO[str], agent: Agent) -> None:
    """A "stop" line or EOF on stdin: stop the job (the launcher is done with us or gone)."""
    try:
        while True:
            line = stream.readline()
            if not line or line.strip() == "stop":
                break
    except (OSError, ValueError):
        pass
    agent.stopping.set()


def main() -> int:
    first = sys.stdin.readline()
    if not first:
        return 2
    spec = AgentSpec.from_json(first)
    agent = Agent(spec, sys.stdout)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stopping.set())
    threading.Thread(target=_watch_stdin, args=(sys.stdin, agent), daemon=True).start()
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
