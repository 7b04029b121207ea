"""Run commands on one host, locally (subprocess) or over SSH (fabric), behind one interface.

The supervisor gets an `Executor` per host and uses it for short commands (`run`: pre-flight,
discovery, mkdir) and for the one long-running agent per host (`start`, returning a `Session`).

Contract shared by both implementations:

- No shell on our side. Over SSH the remote login shell receives ONE line built by
  `command_line`: ``cd <cwd> && exec env K=V ... argv...`` with every value shlex-quoted, so the
  program replaces the shell and is sshd's direct child (no pty, no sudo, no wrapper).
- Environment: locally the child gets the launcher's environment plus ``env``; over SSH it gets
  the remote login environment plus ``env``.
- A `Session`'s stdout is `Session.lines()` (whole lines, in order, no trailing newline; ends at
  EOF). Its stderr is kept apart, so it can never split a stdout line: each stderr line goes to
  the ``on_stderr`` callback given to `start` (default: logged at INFO with the host name) and
  the last lines stay in `Session.stderr_tail()`.
- `Session.close_stdin()` gives the process EOF on stdin (the agent's signal to tear down). Over
  SSH a dropped connection gives the remote process the same EOF (sshd closes its pipes), so an
  agent that exits on stdin EOF never outlives its launcher. (The agent's own children should not
  inherit its stdin/stdout: `lines()` ends only when every holder of that stdout has closed it.)
- The process leads its own session and process group (locally start_new_session=True; sshd
  calls setsid() for every session), so ``kill -TERM -<pid>`` reaches it and all its children.
- `Session.wait()` returns the exit code. A process killed by signal N gives -N locally; over SSH
  it gives -1, as does a lost connection (paramiko does not report the signal).
- A program or folder that does not exist gives exit code 127 / 1 in both (as a shell would),
  not an exception.

Why `start` drives the paramiko channel itself rather than fabric's ``run(asynchronous=True)``:
invoke copies an ``in_stream`` one byte per 10 ms (a 300-byte line took 3.2 s here), and keeps
and re-joins the whole stdout on every chunk (quadratic over a long job). The channel calls are
the ones invoke's `Remote` runner makes (``exec_command``, ``recv``, ``sendall``,
``shutdown_write``, ``recv_exit_status``), without the polling.
"""
from __future__ import annotations

import codecs
import collections
import errno
import json
import logging
import os
import queue
import re
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Deque, Iterator, List, Mapping, Optional, Protocol, Sequence, cast

from launcher import probe
from launcher.errors import ConfigError, HostUnreachable, ProgramNotFound
from launcher.jobplan import own_argv
from launcher.spec import HostSpec, SSHSpec

logger = logging.getLogger(__name__)

STDERR_TAIL_LINES = 200
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_READ_SIZE = 32768
RUN_POLL_S = 0.02
LineCallback = Callable[[str], None]
BatchCallback = Callable[["Session", Optional[List[str]]], None]  # the session, a read's stdout lines; None: EOF


@dataclass(frozen=True)
class RunResult:
    """What a short command gave back."""

    exit_code: int
    stdout: str
    stderr: str


class Executor(Protocol):
    """Runs commands on one host; see the module docstring for the shared contract."""

    host: str

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] = {},
        cwd: Optional[str] = None,
        input: str = "",
    ) -> RunResult:
        """Run a short command to completion, ``input`` on its stdin (then EOF).

        Raises:
            HostUnreachable: the host cannot be reached, or the command ran past ``timeout``
                (locally it is then killed; over SSH its channel is closed, which a command that
                neither reads stdin nor writes output survives).
        """
        ...

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Optional[str],
        on_stderr: Optional[LineCallback] = None,
        on_lines: Optional[BatchCallback] = None,
    ) -> "Session":
        """Start a long-running process with a stdin we write to. Raises HostUnreachable.

        ``on_lines``: called in the session's reader thread with the session and each read's
        stdout lines, and with None at EOF (where ``session.wait()`` may be called), instead of queueing them for `Session.lines()` (a launcher of many hosts
        then needs no thread of its own per host to read them)."""
        ...

    def close(self) -> None:
        """Release the connection (sessions still running over SSH see EOF on stdin)."""
        ...


# --------------------------------------------------------------------------- command lines


def _timed_out(label: str, argv: Sequence[str], timeout: float) -> str:
    return f"host {label}: `{shlex.join(argv)}` did not finish within {timeout:g} s"


def command_line(argv: Sequence[str], env: Mapping[str, str] = {}, cwd: Optional[str] = None) -> str:
    """The one shell line that runs ``argv`` with ``env`` in ``cwd``, every value quoted.

    >>> command_line(["python", "-c", "print(1)"], {"A": "x y"}, "/tmp/a b")
    "cd '/tmp/a b' && exec env 'A=x y' python -c 'print(1)'"
    """
    if not argv:
        raise ValueError("empty command")
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"bad environment variable name {name!r}")
    words: List[str] = []
    if cwd is not None:
        words += ["cd", shlex.quote(cwd), "&&"]
    words.append("exec")
    if env:
        words.append("env")
        words += [shlex.quote(f"{k}={v}") for k, v in env.items()]
    words += [shlex.quote(a) for a in argv]
    return " ".join(words)


# --------------------------------------------------------------------------- sessions


class LineSplitter:
    """Turns byte chunks into whole decoded lines (UTF-8, undecodable bytes replaced)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> List[str]:
        text = self._partial + self._decoder.decode(data)
        *lines, self._partial = text.split("\n")
        return lines

    def finish(self) -> List[str]:
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return [rest] if rest else []


class Session:
    """A running process: write its stdin, read its stdout lines, wait for its exit code.

    Subclasses read their streams in threads of their own: locally `_pump_stdout` and `_pump_stderr`,
    over SSH one thread per channel for both.
    """

    def __init__(self, host: str, on_stderr: Optional[LineCallback], on_lines: Optional[BatchCallback] = None) -> None:
        self.host = host
        self._lines: "queue.Queue[Optional[List[str]]]" = queue.Queue()  # a read's lines; None: EOF
        self._on_lines: BatchCallback = on_lines or (lambda session, lines: self._lines.put(lines))
        self._eof = False
        self._stderr_tail: Deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._on_stderr = on_stderr or self._log_stderr
        self._stdin_lock = threading.Lock()
        self._stdin_closed = False
        self._threads: List[threading.Thread] = []

    # -- what callers use
    def write(self, data: str) -> None:
        """Send ``data`` (UTF-8) to the process's stdin. Raises BrokenPipeError if it is gone.

        Blocks while the pipe (or the SSH window) is full, i.e. while the process does not read.
        """
        with self._stdin_lock:
            if self._stdin_closed:
                raise BrokenPipeError(f"{self.host}: stdin already closed")
            try:
                self._write(data.encode("utf-8"))
            except (OSError, ValueError, EOFError) as exc:
                raise BrokenPipeError(f"{self.host}: cannot write to the process's stdin: {exc}") from exc

    def close_stdin(self) -> None:
        """Give the process EOF on stdin. Idempotent; never raises."""
        with self._stdin_lock:
            if self._stdin_closed:
                return
            self._stdin_closed = True
            try:
                self._close_stdin()
            except (OSError, ValueError, EOFError) as exc:  # already gone: EOF either way
                logger.debug("%s: closing stdin: %s", self.host, exc)

    def lines(self) -> Iterator[str]:
        """The process's stdout as whole lines, as they arrive; ends at EOF."""
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[List[str]]:
        """The process's stdout as lists of whole lines, each list what one read gave; ends at EOF.

        For a reader of many hosts: one queue hand-over per read, not per line.
        """
        while not self._eof:
            batch = self._lines.get()
            if batch is None:
                self._eof = True
                return
            yield batch

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """The exit code, or None if still running after ``timeout`` seconds.

        After the exit it gives the output readers up to 2 s to reach EOF, so that `lines()` and
        `stderr_tail()` are complete unless a child of the process still holds its stdout.
        """
        code = self._wait(timeout)
        if code is not None:
            deadline = time.monotonic() + 2.0
            for thread in self._threads:
                if thread is not threading.current_thread():  # an on_lines callback at EOF may wait
                    thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return code

    def stderr_tail(self, n: int = 20) -> List[str]:
        """The last ``n`` stderr lines seen so far (for error reports)."""
        return list(self._stderr_tail)[-n:]

    def kill(self) -> None:
        """Stop the process without a word: locally SIGKILL to its process group; over SSH close
        the channel (the remote process sees EOF on stdin and SIGPIPE on output)."""
        self._kill()

    # -- for subclasses
    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _close_stdin(self) -> None:
        raise NotImplementedError

    def _wait(self, timeout: Optional[float]) -> Optional[int]:
        raise NotImplementedError

    def _kill(self) -> None:
        raise NotImplementedError

    def _start_pumps(self, read_stdout: Callable[[], bytes], read_stderr: Callable[[], bytes]) -> None:
        for target, reader in ((self._pump_stdout, read_stdout), (self._pump_stderr, read_stderr)):
            name = f"{self.host}-{target.__name__}"
            thread = threading.Thread(target=target, args=(reader,), daemon=True, name=name)
            thread.start()
            self._threads.append(thread)

    def _pump_stdout(self, read: Callable[[], bytes]) -> None:
        splitter = LineSplitter()
        try:
            for chunk in iter(read, b""):
                self._deliver(splitter.feed(chunk))
        except (OSError, EOFError, ValueError) as exc:
            logger.debug("%s: stdout reader stopped: %s", self.host, exc)
        finally:
            self._end_stdout(splitter)

    def _deliver(self, lines: List[str]) -> None:
        if lines:
            self._on_lines(self, lines)

    def _end_stdout(self, splitter: "LineSplitter") -> None:
        """The last partial line, then EOF."""
        self._deliver(splitter.finish())
        self._on_lines(self, None)

    def _emit_stderr(self, line: str) -> None:
        self._stderr_tail.append(line)
        try:
            self._on_stderr(line)
        except Exception:  # a faulty callback must not stop the reader (the pipe would fill)
            logger.exception("%s: stderr callback failed", self.host)

    def _pump_stderr(self, read: Callable[[], bytes]) -> None:
        splitter = LineSplitter()
        try:
            for chunk in iter(read, b""):
                for line in splitter.feed(chunk):
                    self._emit_stderr(line)
        except (OSError, EOFError, ValueError) as exc:
            logger.debug("%s: stderr reader stopped: %s", self.host, exc)
        finally:
            for line in splitter.finish():
                self._emit_stderr(line)

    def _log_stderr(self, line: str) -> None:
        logger.info("%s: %s", self.host, line)


def _closing_reader(stream: IO[bytes]) -> Callable[[], bytes]:
    """read() for a pump: what is available now, b"" at EOF (the pipe is then closed)."""

    def read() -> bytes:
        data = stream.read1(_READ_SIZE)  # type: ignore[attr-defined]
        if not data:
            stream.close()
        return data

    return read


class _LocalSession(Session):
    def __init__(self, host: str, proc: subprocess.Popen, on_stderr: Optional[LineCallback],
                 on_lines: Optional[BatchCallback] = None) -> None:
        super().__init__(host, on_stderr, on_lines)
        self._proc = proc
        # stdin, stdout and stderr are all pipes: _popen passes PIPE for each
        self._stdin = cast(IO[bytes], proc.stdin)
        self._start_pumps(_closing_reader(cast(IO[bytes], proc.stdout)),
                          _closing_reader(cast(IO[bytes], proc.stderr)))

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _write(self, data: bytes) -> None:
        self._stdin.write(data)
        self._stdin.flush()

    def _close_stdin(self) -> None:
        self._stdin.close()

    def _wait(self, timeout: Optional[float]) -> Optional[int]:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _kill(self) -> None:
        kill_process_group(self._proc.pid)  # its own session: start_new_session=True


class _FailedSession(Session):
    """A program that could not start: no output, one stderr line, the shell's exit code."""

    def __init__(self, host: str, exit_code: int, message: str, on_stderr: Optional[LineCallback],
                 on_lines: Optional[BatchCallback] = None) -> None:
        super().__init__(host, on_stderr, on_lines)
        self._code = exit_code
        self._stderr_tail.append(message)
        self._on_stderr(message)
        self._on_lines(self, None)

    def _write(self, data: bytes) -> None:
        raise BrokenPipeError("process did not start")

    def _close_stdin(self) -> None:
        pass

    def _wait(self, timeout: Optional[float]) -> Optional[int]:
        return self._code

    def _kill(self) -> None:
        pass


class _SSHSession(Session):
    """One reader thread per channel for stdout and stderr both: the channel's fileno() becomes
    readable when either has data or the channel is at EOF (paramiko's "or" pipe)."""

    def __init__(self, host: str, channel, on_stderr: Optional[LineCallback],
                 on_lines: Optional[BatchCallback] = None) -> None:
        super().__init__(host, on_stderr, on_lines)
        self._channel = channel
        self._ready_fd = channel.fileno()  # before the thread: data already buffered is signalled too
        thread = threading.Thread(target=self._pump_channel, daemon=True, name=f"{host}-channel")
        thread.start()
        self._threads.append(thread)

    def _pump_channel(self) -> None:
        channel = self._channel
        out, err = LineSplitter(), LineSplitter()
        poller = select.poll()  # not select(): a fleet's launcher holds more than 1024 descriptors
        poller.register(self._ready_fd, select.POLLIN)
        try:
            while True:
                poller.poll(1000)
                while channel.recv_stderr_ready():
                    for line in err.feed(channel.recv_stderr(_READ_SIZE)):
                        self._emit_stderr(line)
                while channel.recv_ready():
                    data = channel.recv(_READ_SIZE)
                    if not data:
                        break
                    self._deliver(out.feed(data))
                if (channel.eof_received or channel.closed) and not channel.recv_ready() \
                        and not channel.recv_stderr_ready():
                    return
        except (OSError, EOFError, ValueError) as exc:
            logger.debug("%s: channel reader stopped: %s", self.host, exc)
        finally:
            for line in err.finish():
                self._emit_stderr(line)
            self._end_stdout(out)

    def _write(self, data: bytes) -> None:
        self._channel.sendall(data)

    def _close_stdin(self) -> None:
        self._channel.shutdown_write()  # SSH_MSG_CHANNEL_EOF: sshd closes the process's stdin

    def _wait(self, timeout: Optional[float]) -> Optional[int]:
        # Set by an exit-status message, or when the channel/connection closes (then -1).
        if not self._channel.status_event.wait(timeout):
            return None
        return int(self._channel.exit_status)

    def _kill(self) -> None:
        self._channel.close()


# --------------------------------------------------------------------------- local


def kill_process_group(pgid: int) -> None:
    """SIGKILL to a process group we started (start_new_session=True); gone already is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _spawn_failure(argv: Sequence[str], cwd: Optional[str], exc: OSError) -> tuple[int, str]:
    """The exit code and message a shell would give for a program that cannot start."""
    if cwd is not None and not os.path.isdir(cwd):
        return 1, f"cd: {cwd}: No such file or directory"
    code = 126 if isinstance(exc, PermissionError) else 127
    return code, f"{argv[0]}: {exc.strerror or exc}"


class LocalExecutor:
    """Runs commands on this machine with subprocess (no shell); the child gets its own session."""

    def __init__(self, host: str = "localhost") -> None:
        self.host = host

    def _popen(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Optional[str], stdin: int
    ) -> subprocess.Popen:
        if not argv:
            raise ValueError("empty command")
        return subprocess.Popen(
            list(argv),
            env={**os.environ, **env},
            cwd=cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] = {},
        cwd: Optional[str] = None,
        input: str = "",
    ) -> RunResult:
        try:
            proc = self._popen(argv, env, cwd, subprocess.PIPE if input else subprocess.DEVNULL)
        except OSError as exc:
            code, message = _spawn_failure(argv, cwd, exc)
            return RunResult(code, "", message + "\n")
        try:
            out, err = proc.communicate(input.encode("utf-8") if input else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process_group(proc.pid)
            proc.communicate()
            raise HostUnreachable(_timed_out(self.host, argv, timeout)) from None
        return RunResult(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Optional[str],
        on_stderr: Optional[LineCallback] = None,
        on_lines: Optional[BatchCallback] = None,
    ) -> Session:
        try:
            proc = self._popen(argv, env, cwd, subprocess.PIPE)
        except OSError as exc:
            code, message = _spawn_failure(argv, cwd, exc)
            return _FailedSession(self.host, code, message, on_stderr, on_lines)
        logger.debug("%s: started pid %s: %s", self.host, proc.pid, shlex.join(argv))
        return _LocalSession(self.host, proc, on_stderr, on_lines)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- SSH


def _describe_connect_error(exc: BaseException, ssh: SSHSpec, user: str, known_hosts: str) -> str:
    """One phrase for why an SSH connection failed."""
    import paramiko
    from paramiko.ssh_exception import NoValidConnectionsError

    timeout = f"{ssh.connect_timeout:g} s"
    if isinstance(exc, paramiko.BadHostKeyException):
        return f"host key does not match the one in {known_hosts} (reinstalled host, or an impostor?)"
    if isinstance(exc, paramiko.PasswordRequiredException):
        return f"key file {ssh.key_file} needs a passphrase (use a key without one, or ssh-agent)"
    if isinstance(exc, paramiko.AuthenticationException):
        with_key = f"with key {ssh.key_file}" if ssh.key_file else "with the default keys and ssh-agent"
        return f"authentication failed for user {user} {with_key} (refused key)"
    if isinstance(exc, NoValidConnectionsError):
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        if errno.ECONNREFUSED in codes:
            return "connection refused (no SSH server on that port?)"
        return f"cannot connect: {exc.strerror or exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"connection timed out after {timeout}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the address: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused (no SSH server on that port?)"
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"unreachable: {exc.strerror}"
        return f"cannot connect: {exc.strerror or exc}"
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "not found in known_hosts" in text:
            return (
                f"host key unknown: no entry for this host in {known_hosts} "
                "(strict host key checking; add it with ssh-keyscan, or set ssh.strict_host_keys: false)"
            )
        if "protocol banner" in text or "No existing session" in text:
            # paramiko gives either, depending on which of its timers fires first
            return f"no SSH server answered within {timeout} (the port accepts, but no SSH greeting came)"
        return f"SSH error: {text}"
    if isinstance(exc, EOFError):
        return "the server closed the connection during the handshake"
    return f"{type(exc).__name__}: {exc}"


class SSHExecutor:
    """Runs commands on a remote host over one fabric `Connection`, opened on first use.

    The connection is hermetic: no ssh_config or invoke/fabric config files are read, only the
    given key (or, with no key_file, the default ~/.ssh keys and ssh-agent), and host keys are
    checked strictly against ``ssh.known_hosts`` (default ~/.ssh/known_hosts) unless
    ``ssh.strict_host_keys`` is false.
    """

    def __init__(self, host: str, ssh: SSHSpec) -> None:
        self.host = host
        self.ssh = ssh
        self.user = ssh.user or _local_user()
        self.known_hosts = os.path.expanduser(ssh.known_hosts or USER_KNOWN_HOSTS)
        self.label = f"{host}:{ssh.port}"
        self._conn = None
        self._lock = threading.Lock()

    # -- connection
    def _new_connection(self):
        import fabric
        import paramiko

        ssh = self.ssh
        config = fabric.Config(lazy=True, overrides={"load_ssh_configs": False})
        connect_kwargs = {
            "timeout": ssh.connect_timeout,
            "banner_timeout": ssh.connect_timeout,
            "auth_timeout": ssh.connect_timeout,
            "channel_timeout": ssh.connect_timeout,
        }
        if ssh.key_file:
            key = os.path.expanduser(ssh.key_file)
            connect_kwargs.update(key_filename=[key], look_for_keys=False, allow_agent=False)
        else:
            connect_kwargs.update(look_for_keys=True, allow_agent=True)
        conn = fabric.Connection(
            self.host,
            user=self.user,
            port=ssh.port,
            config=config,
            gateway=False,
            forward_agent=False,
            connect_timeout=None,  # fabric rounds it to whole seconds; paramiko gets it above
            connect_kwargs=connect_kwargs,
        )
        client = conn.client
        if ssh.strict_host_keys:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            if ssh.known_hosts and not os.path.exists(self.known_hosts):
                raise HostUnreachable(f"host {self.label}: known_hosts file {self.known_hosts} does not exist")
            name = self.host if ssh.port == 22 else f"[{self.host}]:{ssh.port}"  # as known_hosts names it
            keys = client.get_host_keys()  # read-only: never written back
            for path in known_hosts_files(ssh):
                try:
                    found = _known_hosts(path).lookup(name) or {}
                except OSError as exc:
                    raise HostUnreachable(f"host {self.label}: cannot read known_hosts file {path}: {exc}") from None
                for key_type, key in found.items():
                    keys.add(name, key_type, key)
        else:
            logger.warning("host %s: host key not checked (ssh.strict_host_keys is false)", self.label)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # nothing saved: no file loaded
        return conn

    def connect(self):
        """Open (or reopen, if it dropped) the connection; return the fabric `Connection`.

        Raises:
            HostUnreachable: one line naming the host and why.
        """
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return self._conn
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self.ssh.key_file and not os.path.isfile(os.path.expanduser(self.ssh.key_file)):
                raise HostUnreachable(f"host {self.label}: key file {self.ssh.key_file} does not exist")
            conn = self._new_connection()
            try:
                conn.open()
            except Exception as exc:  # paramiko raises many kinds; each becomes one line
                conn.close()
                reason = _describe_connect_error(exc, self.ssh, self.user, self.known_hosts)
                raise HostUnreachable(f"host {self.label}: {reason}") from exc
            transport = conn.transport
            if transport is not None:
                # SSH-level keepalives too (the agent's beats are what detect a silent host)
                transport.set_keepalive(max(int(self.ssh.keepalive_interval), 1))
            self._conn = conn
            logger.debug("host %s: connected as %s", self.label, self.user)
            return conn

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] = {},
        cwd: Optional[str] = None,
        input: str = "",
    ) -> RunResult:
        import paramiko

        line = command_line(argv, env, cwd)
        conn = self.connect()
        try:
            # the channel calls invoke's runner makes, without its byte-by-byte copy of stdin
            channel = conn.create_session()
            channel.exec_command(line)
            if input:
                channel.sendall(input.encode("utf-8"))
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                busy = False
                while channel.recv_ready():
                    out += channel.recv(_READ_SIZE)
                    busy = True
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(_READ_SIZE)
                    busy = True
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    channel.close()
                    raise HostUnreachable(_timed_out(self.label, argv, timeout))
                if not busy:
                    # woken at once by the exit status; else a look at the buffers every 20 ms (a
                    # 2 ms poll in 64 threads at once starved paramiko's own threads of the GIL:
                    # `true` on 64 hosts took 61 s)
                    channel.status_event.wait(RUN_POLL_S)
            code = channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            message = f"host {self.label}: connection lost while running `{shlex.join(argv)}`: {exc}"
            raise HostUnreachable(message) from exc
        return RunResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Optional[str],
        on_stderr: Optional[LineCallback] = None,
        on_lines: Optional[BatchCallback] = None,
    ) -> Session:
        import paramiko

        line = command_line(argv, env, cwd)
        conn = self.connect()
        try:
            channel = conn.create_session()  # the same call invoke's Remote runner makes
            channel.exec_command(line)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(f"host {self.label}: cannot start `{shlex.join(argv)}`: {exc}") from exc
        logger.debug("host %s: started %s", self.label, line)
        return _SSHSession(self.host, channel, on_stderr, on_lines)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_KNOWN_HOSTS_CACHE: dict[str, tuple[tuple[int, int], object]] = {}
_KNOWN_HOSTS_LOCK = threading.Lock()


def _known_hosts(path: str):
    """The parsed known_hosts file (paramiko HostKeys), read once per change of the file.

    Each host's connection loaded the whole file itself: with a line per host, 64 hosts parsed
    4,096 lines, 128 hosts 16,384.
    """
    from paramiko.hostkeys import HostKeys

    stat = os.stat(path)
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _KNOWN_HOSTS_LOCK:
        cached = _KNOWN_HOSTS_CACHE.get(path)
        if cached is None or cached[0] != stamp:
            cached = _KNOWN_HOSTS_CACHE[path] = (stamp, HostKeys(path))
        return cached[1]


GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"  # OpenSSH's GlobalKnownHostsFile
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"


def known_hosts_files(ssh: SSHSpec) -> list[str]:
    """The files host keys are checked against, as OpenSSH reads them: the given file alone, or
    else the user's and the system-wide one (those of them that exist)."""
    if ssh.known_hosts:
        return [os.path.expanduser(ssh.known_hosts)]
    return [p for p in (os.path.expanduser(USER_KNOWN_HOSTS), GLOBAL_KNOWN_HOSTS) if os.path.isfile(p)]


def check_ssh_files(ssh: SSHSpec, source: str) -> None:
    """Before any connection: the key file and the known_hosts files are there, readable and parse.

    Raises:
        ConfigError: one line naming the cluster file's field and the file.
    """
    from paramiko.hostkeys import HostKeyEntry

    def readable(field: str, path: str) -> bytes:
        try:
            with open(path, "rb") as handle:
                return handle.read(1 << 22)
        except FileNotFoundError:
            raise ConfigError(f"{source}: ssh.{field}: {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: ssh.{field}: {path} is a folder, not a file") from None
        except OSError as exc:
            raise ConfigError(f"{source}: ssh.{field}: cannot read {path} ({exc.strerror})") from None

    if ssh.key_file:
        readable("key_file", os.path.expanduser(ssh.key_file))
    if not ssh.strict_host_keys:
        return
    for path in known_hosts_files(ssh):
        text = readable("known_hosts", path).decode("utf-8", "replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                entry = HostKeyEntry.from_line(line, number)
            except Exception:  # noqa: BLE001 - paramiko raises several kinds for a bad key blob
                entry = None
            if entry is None and not line.lstrip().startswith("@"):  # @cert-authority / @revoked: OpenSSH's own
                raise ConfigError(f"{source}: ssh.known_hosts: {path} line {number} does not parse as a "
                                  f"known_hosts entry")


def _local_user() -> str:
    import getpass

    return getpass.getuser()


# --------------------------------------------------------------------------- helpers


def executor_for(host: HostSpec, ssh: SSHSpec) -> Executor:
    """A LocalExecutor for a loopback address, an SSHExecutor otherwise."""
    if host.is_local:
        return LocalExecutor(host.address)
    return SSHExecutor(host.address, ssh)


@dataclass(frozen=True)
class ProgramCheck:
    """A ``command:`` to look for on a host before anything starts: its folder and its argv."""

    folder: str  # absolute; "" = the login folder
    argv: tuple[str, ...]  # as the ranks will run it (the interpreter already in place of ``python``)
    python_first: bool = False  # argv[0] is the host's interpreter: then look for the script or module


def check_host(
    executor: Executor,
    python: str,
    timeout: float,
    *,
    env: Mapping[str, str] = {},
    cwd: Optional[str] = None,
    needs_mindspore: bool = True,
    program: Optional[ProgramCheck] = None,
) -> Optional[str]:
    """Pre-flight: the host answers, ``python`` imports our packages there, and ``program`` is there.

    Returns the host's MindSpore version when ``needs_mindspore`` (else None).

    Raises:
        HostUnreachable: one line naming the host: unreachable, refused key, unknown host key,
            no such interpreter, or an interpreter without mscluster or MindSpore.
        ProgramNotFound: the command's folder, program, script or module is missing on the host.
    """
    name = getattr(executor, "label", executor.host)
    spec = {"mindspore": needs_mindspore, "builtin": program is None,
            "program": None if program is None else {"folder": program.folder, "argv": list(program.argv),
                                                     "python_first": program.python_first}}
    result = executor.run(own_argv(python, "launcher.probe"), timeout=timeout, env=env, cwd=cwd,
                          input=json.dumps({"check": spec}))
    if result.exit_code == 0:
        answer = next((ln for ln in reversed(result.stdout.splitlines()) if ln.startswith("{")), "{}")
        try:
            return json.loads(answer).get("mindspore")
        except ValueError:
            return None
    last = next((ln.strip() for ln in reversed(result.stderr.splitlines()) if ln.strip()), "")
    if result.exit_code == probe.MISSING_EXIT and last.startswith(probe.MISSING + " "):
        raise ProgramNotFound(f"host {name}: no {last.split(' ', 1)[1]}; nothing was started")
    if result.exit_code in (126, 127):
        raise HostUnreachable(f"host {name}: python interpreter {python} not found or not executable ({last})")
    reason = last or f"exit code {result.exit_code}"
    raise HostUnreachable(f"host {name}: {python} is not ready for mscluster: {reason}")
