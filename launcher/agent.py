"""The per-host agent: starts this host's processes, relays what they say, stops them all on demand.

Run as ``python -m launcher.agent`` by the launcher (locally or over SSH). It reads its AgentSpec
from the first line of stdin and then watches stdin: EOF means the launcher wants the job stopped,
has died, or lost its SSH connection, and in every case the agent stops its processes (TERM to
each process group, a grace period, KILL) before it exits, so no rank outlives its launcher. A
process that fails stops this host's other processes at once; the launcher stops the other hosts.

Every process gets three pipes: stdout, stderr, and its event channel (``MSCLUSTER_EVENT_FD``,
the write end, for ``mscluster.rank``). One thread reads them all through a selector, and a
process's end is noticed by waiting on its pid, not by EOF on a pipe that a child of it may
still hold. Each process runs in its own session (its pid is its process group) with
PR_SET_PDEATHSIG, so even a SIGKILLed agent takes its ranks with it. Imports no MindSpore.

Under Slurm (``launcher.slurm.step``) one srun step starts the agent on every node; each connects back
to the launcher (``MSCLUSTER_AGENT_CONNECT``) and uses that connection as its stdin and stdout.
Control lines on stdin (``launcher.protocol.ControlMessage``): ``stop`` stops every process as EOF
does, ``stacks`` dumps their stacks, and ``preempt`` forwards SIGUSR1 to every rank (Slurm's
warning before the time limit): the built-in trainer's rank 0 then saves a checkpoint and exits
with ``mscluster.rank.PREEMPT_EXIT``.
"""
from __future__ import annotations

import ctypes
import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Optional

from launcher.connect_back import CONNECT_ENV, TOKEN_ENV, connect_back
from launcher.protocol import (ControlMessage, ControlReader, ProtocolError, AgentMessage, AgentSpec, Alive, Done, Exited, Output, ProcessSpec,
                               Relayed, Stacks, Started, encode_message, split_cpus)
from mscluster import events, jobfiles
from mscluster.fsutil import write_atomic
from mscluster.rank import EVENT_FD_ENV, PREEMPT_SIGNAL

_PR_SET_PDEATHSIG = 1
POLL_S = 0.05  # how often exits are looked for while nothing is read
MAX_LINE = 65536  # a longer run of bytes without a newline is relayed in pieces of this size
MAX_ERROR_FILE = 262144
# Lines and events are sent in batches: at most this long after the first of a batch (or at
# 256 KiB). Eight ranks printing 50 lines/s each were one SSH packet per line, and at 64 hosts
# the launcher's SSH stack could not decrypt them as fast as they came; exits, the end, stacks
# and beats go at once.
BATCH_S = 0.05
BATCH_BYTES = 262144


@dataclass
class _Stream:
    """One pipe this agent reads: a process's stdout, stderr or event channel."""

    run: "Running"
    kind: str  # stdout | stderr | events
    fd: int
    pending: bytes = b""


@dataclass
class Running:
    spec: ProcessSpec
    proc: subprocess.Popen
    streams: list[_Stream] = field(default_factory=list)
    reported: bool = False


class Agent:
    """Runs one host's processes for one attempt of a job."""

    def __init__(self, spec: AgentSpec, out: BinaryIO, stdin_fd: Optional[int] = None):
        self.spec = spec
        self.out = out
        self.stdin_fd = stdin_fd
        self.running: list[Running] = []
        self.finished: set[str] = set()  # processes whose entry point returned (events.Finished)
        self.selector = selectors.DefaultSelector()
        self.stop_requested = False  # the launcher (EOF on stdin) or a signal asked for a stop
        self.launcher_lives = False  # it said stop before its EOF: a stop, not its death
        self.launcher_gone = False  # EOF without a stop, or silence: the snapshot folder goes too
        self.kill_at: Optional[float] = None  # a stop is under way: KILL what is left at this time
        self.ok = True
        self.heard_at = time.monotonic()  # the launcher's last word on stdin
        self.beat_at = 0.0  # when this agent last sent its own beat
        self.control = ControlReader()  # stdin's control lines, whole however the reads split them
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._batch_since: Optional[float] = None  # when the oldest message waiting was emitted

    # -- output ------------------------------------------------------------------------------------
    def emit(self, msg: AgentMessage) -> None:
        """Queue one message for the launcher; exits, the end, stacks and beats are sent at once."""
        data = (encode_message(msg) + "\n").encode("utf-8")
        self._batch.append(data)
        self._batch_size += len(data)
        if self._batch_since is None:
            self._batch_since = time.monotonic()
        if isinstance(msg, (Exited, Done, Stacks, Alive)) or self._batch_size >= BATCH_BYTES:
            self.send()

    def send(self) -> None:
        """Write every queued message in one write."""
        if not self._batch:
            return
        data = b"".join(self._batch)
        self._batch.clear()
        self._batch_size, self._batch_since = 0, None
        try:
            self.out.write(data)
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.stop_requested = True  # nobody listens any more: stop the job

    def _send_due(self) -> None:
        if self._batch_since is not None and time.monotonic() - self._batch_since >= BATCH_S:
            self.send()

    def _select_timeout(self) -> float:
        if self._batch_since is None:
            return POLL_S
        return min(POLL_S, max(self._batch_since + BATCH_S - time.monotonic(), 0.0))

    # -- start -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """The job folder on this host (0700: logs and error files can hold secrets) and its files (0600)."""
        for folder in (self.spec.job_dir, os.path.join(self.spec.job_dir, jobfiles.ERRORS_DIR)):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
        for rel, content in self.spec.files:
            if os.path.isabs(rel) or ".." in rel.split("/"):
                raise ValueError(f"a job file outside the job folder: {rel!r}")
            write_atomic(os.path.join(self.spec.job_dir, rel), content, mode=0o600)

    def _cpus(self, p: ProcessSpec) -> Optional[tuple[int, ...]]:
        if p.cpus is not None:
            return p.cpus or None
        if not self.spec.bind_cores or p.rank is None:
            return None
        return split_cpus(sorted(os.sched_getaffinity(0)), p.local_rank, p.local_size) or None

    def start_all(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for p in self.spec.processes:
            self._keepalive()  # starting 8 ranks on a loaded host can take seconds: the launcher hears us
            if self.stop_requested:
                return
            if p.error_file and os.path.exists(p.error_file):
                os.remove(p.error_file)
            cpus = self._cpus(p)

            def preexec(cpus=cpus) -> None:  # runs in the child, before exec: no MindSpore yet
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if cpus:
                    os.sched_setaffinity(0, cpus)

            read_end, write_end = os.pipe()
            env = {**os.environ, **dict(p.env), EVENT_FD_ENV: str(write_end)}
            try:
                proc = subprocess.Popen(list(p.argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec,
                                        pass_fds=(write_end,), cwd=p.cwd)
            except OSError as exc:  # no such program or folder: the process "ran" and failed
                os.close(read_end)
                os.close(write_end)
                self._start_failed(p, exc)
                return
            os.close(write_end)
            run = Running(p, proc)
            for kind, fd in (("stdout", proc.stdout.fileno()), ("stderr", proc.stderr.fileno()),  # type: ignore[union-attr]
                             ("events", read_end)):
                os.set_blocking(fd, False)
                stream = _Stream(run, kind, fd)
                run.streams.append(stream)
                self.selector.register(fd, selectors.EVENT_READ, stream)
            self.running.append(run)
            self.emit(Started(name=p.name, pid=proc.pid, cpus=tuple(cpus) if cpus else None))
        self.send()

    def _start_failed(self, p: ProcessSpec, exc: OSError) -> None:
        where = f" in {p.cwd}" if p.cwd else ""
        self.emit(Output(name=p.name, stream="stderr", line=f"mscluster agent: cannot start {p.argv[0]}{where}: "
                                                             f"{exc.strerror or exc}"))
        self.emit(Exited(name=p.name, rank=p.rank, code=127 if isinstance(exc, FileNotFoundError) else 126,
                         signal=None, time=time.time()))
        self.ok = False
        self.stop_requested = True

    # -- reading -----------------------------------------------------------------------------------
    def _read(self, stream: _Stream) -> bool:
        """Read what the pipe holds; relay whole lines. False at EOF (the pipe is then closed)."""
        while True:
            try:
                chunk = os.read(stream.fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                chunk = b""
            if not chunk:
                if stream.pending:
                    self._line(stream, stream.pending)
                    stream.pending = b""
                self._close(stream)
                return False
            data = stream.pending + chunk
            *lines, stream.pending = data.split(b"\n")
            for line in lines:
                self._line(stream, line)
            while len(stream.pending) > MAX_LINE:
                self._line(stream, stream.pending[:MAX_LINE])
                stream.pending = stream.pending[MAX_LINE:]

    def _line(self, stream: _Stream, raw: bytes) -> None:
        name = stream.run.spec.name
        if stream.kind != "events":
            self.emit(Output(name=name, line=raw.decode("utf-8", "replace").rstrip("\r"), stream=stream.kind))
            return
        if not raw.strip():
            return
        try:
            event = events.decode(raw)
            if isinstance(event, events.Finished):
                self.finished.add(name)
            self.emit(Relayed(name=name, event=event))
        except events.EventError as exc:  # shown to the user, never taken for an event
            self.emit(Output(name=name, stream="stderr", line=f"mscluster agent: ignored a bad event from {name}: {exc}"))

    def _close(self, stream: _Stream) -> None:
        try:
            self.selector.unregister(stream.fd)
        except (KeyError, ValueError):
            pass
        try:
            os.close(stream.fd)
        except OSError:
            pass
        if stream in stream.run.streams:
            stream.run.streams.remove(stream)

    def remove_snapshots(self) -> None:
        """The launcher died: nobody will resume from or remove this host's snapshot folder; remove it."""
        folder = self.spec.snapshot_dir
        if folder and jobfiles.is_snapshot_dir(folder) and os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
            sys.stderr.write(f"mscluster agent: the launcher is gone: removed {folder}\n")
            sys.stderr.flush()

    # -- stop --------------------------------------------------------------------------------------
    def begin_stop(self) -> None:
        """TERM every live process group; what is still there after the grace period gets KILL."""
        if self.kill_at is not None:
            return
        self.ok = False
        for r in self.running:
            if r.proc.poll() is None:
                _signal_group(r.proc.pid, signal.SIGTERM)
                _signal_group(r.proc.pid, signal.SIGCONT)  # a frozen (stopped) process can act on TERM only once it runs
        self.kill_at = time.monotonic() + self.spec.grace_period

    def _report(self, run: Running) -> None:
        for stream in list(run.streams):  # what it wrote before it ended; a child holding the pipe is cut off
            if self._read(stream):
                self._close(stream)
        code = run.proc.returncode
        run.reported = True
        self.emit(Exited(name=run.spec.name, rank=run.spec.rank,
                         code=code if code is None or code >= 0 else None,
                         signal=_signal_name(-code) if code is not None and code < 0 else None,
                         time=time.time(), error=_read_error_file(run.spec.error_file)))
        if code != 0 and run.spec.name not in self.finished:  # after it finished: a crash at exit, not a failure
            self.begin_stop()  # one failed: the others of this host go too

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        self.prepare()
        if self.stdin_fd is not None:
            os.set_blocking(self.stdin_fd, False)
            self.selector.register(self.stdin_fd, selectors.EVENT_READ, None)
        self.start_all()
        if len(self.running) < len(self.spec.processes):
            self.ok = False  # stopped (or failed) before everything started: not a success
        while not all(r.reported for r in self.running):
            for key, _ in self.selector.select(timeout=self._select_timeout()):
                if key.data is None:
                    self._read_stdin()
                else:
                    self._read(key.data)
            for run in self.running:
                if not run.reported and run.proc.poll() is not None:
                    self._report(run)
            self._keepalive()
            if self.stop_requested:
                self.begin_stop()
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                _kill_groups([r.proc.pid for r in self.running if not r.reported], timeout=0.0)
            self._send_due()
        _kill_groups([r.proc.pid for r in self.running])  # leftovers (children) of ranks, if any
        if self.launcher_gone:
            self.remove_snapshots()
        self.emit(Done(ok=self.ok))
        return 0 if self.ok else 1

    def _keepalive(self) -> None:
        """Beat to the launcher; stop everything when the launcher has been silent too long (a partition)."""
        interval = self.spec.keepalive_interval
        if interval <= 0 or self.stdin_fd is None:
            return
        now = time.monotonic()
        if now - self.beat_at >= interval:
            self.beat_at = now
            self.emit(Alive(time=time.time(), states=self.rank_states()))
        silent = now - self.heard_at
        if silent > interval * self.spec.keepalive_count and not self.stop_requested:
            sys.stderr.write(f"mscluster agent: no word from the launcher for {silent:.0f} s: stopping this "
                             f"host's processes\n")
            sys.stderr.flush()
            self.stop_requested = True
            self.launcher_gone = True

    def rank_states(self) -> dict[str, str]:
        """The kernel's state of each live rank (a read of /proc/<pid>/stat each): the watchdog's
        word on a rank whose beats stopped (T stopped, D uninterruptible, R/S busy in MindSpore)."""
        return {r.spec.name: _process_state(r.proc.pid) for r in self.running
                if r.spec.rank is not None and not r.reported and r.proc.returncode is None}

    def _read_stdin(self) -> None:
        """EOF on stdin: the launcher is done with us, or gone; else control lines (launcher.protocol)."""
        try:
            data = os.read(self.stdin_fd, 4096)  # type: ignore[arg-type]
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.heard_at = time.monotonic()
        if not data:
            self.stop_requested = True
            self.launcher_gone = not self.launcher_lives  # EOF without a stop first: the launcher died
            self.selector.unregister(self.stdin_fd)
            return
        self.on_control_bytes(data)

    def on_control_bytes(self, data: bytes) -> None:
        """Act on each whole control line in ``data`` (a line split across reads waits for its end)."""
        for msg in self.control.feed(data):
            if isinstance(msg, ProtocolError):
                sys.stderr.write(f"mscluster agent: ignored a line from the launcher: {msg}\n")
                sys.stderr.flush()
            elif msg is ControlMessage.STOP:
                self.stop_requested = True
                self.launcher_lives = True
            elif msg is ControlMessage.PREEMPT:
                self.forward_preempt()
            elif msg is ControlMessage.STACKS:
                self.dump_stacks()
            # BEAT: hearing it is all (heard_at)

    def forward_preempt(self) -> None:
        """SIGUSR1 to each rank's own process (not its group: a data loader's workers would die of it)."""
        for run in self.running:
            if run.spec.rank is not None and not run.reported and run.proc.poll() is None:
                try:
                    os.kill(run.proc.pid, PREEMPT_SIGNAL)
                except ProcessLookupError:
                    pass

    def dump_stacks(self) -> None:
        """Every live process's Python stack (``py-spy dump``, all at once, 10 s at most), each written
        to ``errors/stacks-attempt<k>/`` of this host and sent to the launcher."""
        folder = jobfiles.stacks_dir(self.spec.job_dir, self.spec.attempt)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        spy = shutil.which("py-spy", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
        if self.spec.stack_tool == "faulthandler":
            spy = None
        running = [r for r in self.running if not r.reported and r.proc.poll() is None]
        states = {r.spec.name: _process_state(r.proc.pid) for r in running}  # before anything touches them
        dumps = {}
        if spy:
            for r in running:  # --nonblocking: read the memory without stopping it (works on a frozen one too)
                dumps[r.spec.name] = subprocess.Popen([spy, "dump", "--nonblocking", "--pid", str(r.proc.pid)],
                                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        for r in running:
            dump = dumps.get(r.spec.name)
            text, method = "", "none"
            if dump is not None:
                try:
                    out, _ = dump.communicate(timeout=max(deadline - time.monotonic(), 0.1))
                    if dump.returncode == 0:
                        text, method = out.decode("utf-8", "replace"), "py-spy"
                    else:
                        text = f"py-spy could not read the process: {out.decode('utf-8', 'replace').strip()[-300:]}"
                except subprocess.TimeoutExpired:
                    dump.kill()
                    dump.communicate()
                    text = "py-spy did not answer within 10 s"
            if method == "none" and self.spec.stack_tool != "py-spy":
                text, method = _faulthandler_stack(r, fallback=text)
            write_atomic(os.path.join(folder, jobfiles.stack_file_name(r.spec.name)), text, mode=0o600)
            self.emit(Stacks(name=r.spec.name, text=text[-65536:], method=method, state=states[r.spec.name]))


def _process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (R running, S sleeping, D uninterruptible, T stopped), or "?"."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0][:1] or "?"
    except (OSError, IndexError):
        return "?"


def _signal_main_thread(pid: int, sig: int) -> None:
    """Signal the process's main thread (tid == pid), so faulthandler's "Current thread" is the main one."""
    import platform

    number = {"x86_64": 234, "aarch64": 131}.get(platform.machine())
    libc = ctypes.CDLL(None, use_errno=True)
    if number is None or libc.syscall(number, pid, pid, int(sig)) != 0:
        os.kill(pid, sig)


def _faulthandler_stack(run: "Running", fallback: str) -> tuple[str, str]:
    """The rank's own faulthandler dump (SIGUSR2; mscluster.rank registered it), read from its stack file."""
    from mscluster.rank import STACK_FILE_ENV, STACK_SIGNAL

    path = dict(run.spec.env).get(STACK_FILE_ENV)
    if not path:
        return (fallback or "no stack: py-spy is not installed and the process does not use mscluster.rank"), "none"
    try:
        start = os.path.getsize(path)
    except OSError:
        return (fallback or "no stack: the process never registered its faulthandler (mscluster.rank)"), "none"
    try:
        _signal_main_thread(run.proc.pid, STACK_SIGNAL)
    except OSError:
        return fallback or "no stack: the process is gone", "none"
    deadline = time.monotonic() + 3.0
    text = ""
    while time.monotonic() < deadline:
        time.sleep(0.1)
        with open(path, encoding="utf-8", errors="replace") as handle:
            handle.seek(start)
            text = handle.read()
        if text and "most recent call first" in text and text.endswith("\n\n"):
            break
    if not text:
        return ((fallback + "; " if fallback else "") + "no answer to SIGUSR2 within 3 s (frozen?)"), "none"
    return text, "faulthandler"


def _read_error_file(path: Optional[str]) -> Optional[dict]:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.loads(handle.read(MAX_ERROR_FILE))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {k: str(record.get(k, "")) for k in ("type", "message", "traceback")}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name in the enum
        return f"SIG{number}"


def _kill_groups(pgids: list[int], timeout: float = 5.0) -> None:
    """KILL every process group still alive and wait (up to ``timeout``) until none is."""
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


def _read_spec_line(fd: int) -> tuple[str, bytes]:
    """The first line of stdin, and whatever arrived after it in the same reads."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            return data.decode("utf-8"), b""
        data += chunk
    line, rest = data.split(b"\n", 1)
    return line.decode("utf-8"), rest


class _SocketWriter:
    """The agent's stdout under Slurm: its connection to the launcher, which the agent's loop has
    made non-blocking (one file description for reading and writing): write all, waiting as a pipe would."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)
        return len(data)

    def flush(self) -> None:
        pass


def main() -> int:
    sock = connect_back(os.environ)
    for name in (CONNECT_ENV, TOKEN_ENV):
        os.environ.pop(name, None)  # the agent's own environment: its ranks need neither
    stdin_fd = sock.fileno() if sock is not None else sys.stdin.fileno()
    first, rest = _read_spec_line(stdin_fd)
    if not first.strip():
        return 2
    spec = AgentSpec.from_json(first)
    agent = Agent(spec, _SocketWriter(stdin_fd) if sock is not None else sys.stdout.buffer, stdin_fd)  # type: ignore[arg-type]
    agent.on_control_bytes(rest)  # control lines that came with the spec (a stop before anything started)

    def on_signal(*_: object) -> None:
        agent.stop_requested = True

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    code = agent.run()
    if sock is not None:
        sock.close()
        # the launcher has the result (Done): a non-zero exit would make srun's --kill-on-bad-exit cut
        # the other nodes' agents short of their orderly stop
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
