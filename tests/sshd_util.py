"""A private OpenSSH server for tests: keys, config and sshd all live in one temporary folder.

Use the ``sshd`` fixture (session scope, 127.0.0.1 on a free port), or ``running_sshd()``
as a context manager for a server of your own (``netns=`` starts it inside a network namespace).
The server accepts exactly one user key (``SSHServer.key_file``) for the current user, and
``SSHServer.known_hosts`` holds its host key, so clients can check host keys strictly.

Needs root (sshd runs with ``UsePAM no`` as the current user, which must be root to switch to the
login user), ``/usr/sbin/sshd`` and ``ssh-keygen`` (``scripts/ci_system_deps.sh`` installs them).
When something is missing the test is skipped, or fails when the environment has ``CI`` set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import psutil
import pytest

from helpers import free_port
from launcher.spec import SSHSpec

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 10.0  # seconds for sshd to listen; it takes ~50 ms here


def in_ci() -> bool:
    """Whether the CI environment variable asks for missing system tools to fail, not skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip the test on a user's machine; fail it under CI, where the tools must be present."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_sshd() -> None:
    """Skip (or fail under CI) unless we are root and sshd and ssh-keygen are installed."""
    if os.geteuid() != 0:
        skip_or_fail("needs root to run a private sshd")
    if not os.access(SSHD, os.X_OK):
        skip_or_fail(f"{SSHD} missing: run scripts/ci_system_deps.sh as root")
    if shutil.which("ssh-keygen") is None:
        skip_or_fail("ssh-keygen missing: run scripts/ci_system_deps.sh as root")


@dataclass(frozen=True)
class SSHServer:
    """A running private sshd and what a client needs to log in to it."""

    address: str
    port: int
    user: str
    key_file: str  # private key accepted for `user`
    known_hosts: str  # "[address]:port ssh-ed25519 ..." for strict host-key checking
    pid: int
    log: str  # sshd's own log (-E)
    workdir: str

    def ssh_spec(self, **changes: object) -> SSHSpec:
        """The launcher's SSH settings for this server, strict host keys on; override any field."""
        spec = SSHSpec(
            user=self.user,
            port=self.port,
            key_file=self.key_file,
            connect_timeout=5.0,
            strict_host_keys=True,
            known_hosts=self.known_hosts,
        )
        return dataclasses.replace(spec, **changes)

    def log_text(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""


def keygen(path: Path, comment: str) -> Path:
    """Write an ed25519 key pair without passphrase at ``path`` (+ ``.pub``); return ``path``.

    A pair already there (a test folder used again) is replaced: ssh-keygen would stop to ask.
    """
    for old in (Path(path), Path(f"{path}.pub")):
        old.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    return path


def sshd_config(workdir: Path, address: str, port: int, host_key: Path, extra: Sequence[str]) -> Path:
    lines = [
        f"Port {port}",
        f"ListenAddress {address}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
        f"PidFile {workdir / 'sshd.pid'}",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "X11Forwarding no",
        "PrintMotd no",
        "PrintLastLog no",
        "MaxStartups 64",
        # Every test host logs in to this machine's one home folder. Where its .bashrc runs `pyenv
        # init`, every login takes pyenv's rehash lock, so 64 hosts' logins queued behind each
        # other, and a login killed while holding it (a teardown) made every later one wait 60 s.
        # Real hosts have a home folder each; here a login waits 1 s at most.
        # (one SetEnv line: sshd takes the first one only, so the caller's values join this one)
        " ".join(["SetEnv PYENV_REHASH_TIMEOUT=1", *(e.split(None, 1)[1] for e in extra if e.startswith("SetEnv "))]),
        "LogLevel VERBOSE",
        *(e for e in extra if not e.startswith("SetEnv ")),
    ]
    cfg = workdir / "sshd_config"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def wait_listening(proc: subprocess.Popen, address: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"sshd exited with {proc.returncode}: {tail}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"sshd did not listen on {address}:{port} within {START_TIMEOUT} s")


def stop_process_tree(pid: int, grace: float = 0.5) -> None:
    """TERM ``pid`` and all its descendants (sshd's per-connection children too), then KILL.

    By pid only: sshd's connection children call setsid(), so a process group would miss them.
    (A connection child can take ~1.7 s to act on TERM here, hence the short grace.)
    """
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [root]
    with contextlib.suppress(psutil.NoSuchProcess):
        procs += root.children(recursive=True)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


@contextlib.contextmanager
def running_sshd(
    workdir: Path,
    address: str = "127.0.0.1",
    *,
    netns: Optional[str] = None,
    user_key: Optional[Path] = None,
    extra_config: Sequence[str] = (),
    port: Optional[int] = None,
) -> Iterator[SSHServer]:
    """Start a private sshd on ``address`` (inside network namespace ``netns`` if given).

    Args:
        workdir: an empty folder for keys, config, pid file and log.
        address: the ListenAddress; must be reachable from the root namespace.
        netns: run sshd with ``ip netns exec <netns>``.
        user_key: accept this existing private key (its ``.pub`` beside it) instead of a new one.
        extra_config: more sshd_config lines.
        port: listen on this port (default: a free one, retried if another process takes it).
    """
    require_sshd()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    host_key = keygen(workdir / "ssh_host_ed25519_key", "test-host")
    if user_key is None:
        user_key = keygen(workdir / "id_ed25519", "test-user")
    (workdir / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    host_pub = Path(f"{host_key}.pub").read_text().split()
    log = workdir / "sshd.log"
    prefix = ["ip", "netns", "exec", netns] if netns else []

    proc: Optional[subprocess.Popen] = None
    last_error: Optional[Exception] = None
    for _attempt in range(1 if port else 3):  # another process may take a free port first
        port = port or free_port("127.0.0.1" if netns else address)
        cfg = sshd_config(workdir, address, port, host_key, extra_config)
        log.write_text("")
        proc = subprocess.Popen(
            [*prefix, SSHD, "-D", "-f", str(cfg), "-E", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_listening(proc, address, port, log)
            break
        except RuntimeError as exc:
            last_error = exc
            stop_process_tree(proc.pid)
            proc.wait()
            proc = None
            port = None
    if proc is None or port is None:
        raise RuntimeError(f"could not start sshd on {address}: {last_error}")

    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[{address}]:{port} {host_pub[0]} {host_pub[1]}\n")
    server = SSHServer(
        address=address,
        port=port,
        user=getpass.getuser(),
        key_file=str(user_key),
        known_hosts=str(known_hosts),
        pid=proc.pid,  # `ip netns exec` execs sshd, so this is sshd's own pid
        log=str(log),
        workdir=str(workdir),
    )
    try:
        yield server
    finally:
        stop_process_tree(proc.pid)
        proc.wait()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """A private sshd on 127.0.0.1 for the whole session (skips, or fails under CI, without sshd)."""
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


class LineReader:
    """Reads a `launcher.executor.Session`'s lines in a thread, so a test waits with a deadline
    (and fails) instead of hanging when a line or EOF never comes."""

    _EOF = object()

    def __init__(self, session) -> None:
        self._queue: "queue.Queue[object]" = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(session,), daemon=True)
        self._thread.start()

    def _pump(self, session) -> None:
        try:
            for line in session.lines():
                self._queue.put(line)
        finally:
            self._queue.put(self._EOF)

    def next(self, timeout: float = 10.0) -> str:
        """The next line; fails the test at EOF or after ``timeout`` seconds."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line within {timeout} s", pytrace=False)
        if item is self._EOF:
            self._queue.put(item)
            pytest.fail("EOF instead of a line", pytrace=False)
        return item  # type: ignore[return-value]

    def rest(self, timeout: float = 10.0) -> List[str]:
        """Every line until EOF; fails the test if EOF does not come within ``timeout`` seconds."""
        lines: List[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no EOF within {timeout} s (got {len(lines)} lines)", pytrace=False)
            if item is self._EOF:
                self._queue.put(item)
                return lines
            lines.append(item)  # type: ignore[arg-type]
