"""The executors: the same behaviour locally (subprocess) and over SSH (fabric, a private sshd).

Feature: the launcher starts one agent per host through an Executor and talks to it over stdin
and stdout. Expectation: both executors run commands, stream whole lines in order, return exit
codes, pass env/argv values unchanged, give the process EOF on stdin when we close it or when the
launcher's connection/process dies, and report an unusable host as one line naming it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from launcher.errors import HostUnreachable
from launcher.executor import (LocalExecutor, RunResult, SSHExecutor, check_host, command_line,
                               executor_for)
from launcher.spec import HostSpec, SSHSpec
from helpers import free_port, wait_for
from sshd_util import LineReader, keygen, sshd  # noqa: F401  (sshd is a fixture)

PY = sys.executable  # the filesystem is shared: the same interpreter serves "remote" hosts
REPO_ROOT = str(Path(__file__).resolve().parent.parent)

# Reads stdin lines, answers each on stdout; at EOF writes a marker file and exits 7.
ECHO_UNTIL_EOF = textwrap.dedent(
    """
    import os, sys
    marker = sys.argv[1]
    print("pid", os.getpid(), flush=True)
    for line in sys.stdin:
        print("got", len(line.rstrip("\\n")), line[:20].rstrip("\\n"), flush=True)
    with open(marker, "w") as f:
        f.write("eof")
    sys.exit(7)
    """
)


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def executor(request):
    if request.param == "local":
        ex = LocalExecutor()
    else:
        server = request.getfixturevalue("sshd")
        ex = SSHExecutor(server.address, server.ssh_spec())
    yield ex
    ex.close()


# --------------------------------------------------------------------------- command line


def test_command_line_quotes_every_value():
    line = command_line(["prog", "a b", "$HOME"], {"K": "it's"}, "/tmp/x y")
    assert line == "cd '/tmp/x y' && exec env 'K=it'\"'\"'s' prog 'a b' '$HOME'"
    assert command_line(["prog"]) == "exec prog"


def test_command_line_rejects_bad_env_names():
    with pytest.raises(ValueError, match="A B"):
        command_line(["prog"], {"A B": "x"})


def test_executor_for_picks_local_for_loopback_names_only():
    ssh = SSHSpec()
    assert isinstance(executor_for(HostSpec("localhost", (0,)), ssh), LocalExecutor)
    assert isinstance(executor_for(HostSpec("127.0.0.1", (0,)), ssh), LocalExecutor)
    remote = executor_for(HostSpec("10.213.0.7", (0,)), ssh)  # nothing is contacted here
    assert isinstance(remote, SSHExecutor) and remote.host == "10.213.0.7"


# --------------------------------------------------------------------------- run


def test_run_returns_stdout_stderr_and_exit_code(executor):
    result = executor.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert result == RunResult(3, "out\n", "err\n")


def test_env_and_argv_values_arrive_unchanged(executor, tmp_path):
    canary = tmp_path / "injected"
    nasty = [
        "two words",
        "it's \"quoted\"",
        "$HOME ${PATH} $(touch " + str(canary) + ") `touch " + str(canary) + "`",
        "semi; colon && amp | pipe > redirect",
        "new\nline\ttab",
        "*",
        "",
        "--not-an-option",
    ]
    env = {f"V{i}": v for i, v in enumerate(nasty)}
    code = (
        "import json, os, sys\n"
        "print(json.dumps([sys.argv[1:], {k: os.environ[k] for k in sys.argv[1:] if k in os.environ}]))"
    )
    result = executor.run([PY, "-c", code, *nasty, *env], timeout=10, env=env)
    assert result.exit_code == 0, result.stderr
    argv, seen = json.loads(result.stdout)
    assert argv == nasty + list(env)
    assert seen == env
    assert not canary.exists()


def test_run_in_cwd_and_missing_cwd_or_program(executor, tmp_path):
    folder = tmp_path / "a folder"
    folder.mkdir()
    assert executor.run(["pwd"], timeout=10, cwd=str(folder)).stdout.strip() == str(folder)
    missing_dir = executor.run(["pwd"], timeout=10, cwd=str(tmp_path / "nope"))
    assert missing_dir.exit_code == 1 and "nope" in missing_dir.stderr
    missing_prog = executor.run([str(tmp_path / "no-such-program")], timeout=10)
    assert missing_prog.exit_code == 127 and "no-such-program" in missing_prog.stderr


def test_run_gives_empty_stdin(executor):
    started = time.monotonic()
    assert executor.run(["cat"], timeout=10) == RunResult(0, "", "")
    assert time.monotonic() - started < 5


def test_run_timeout_is_one_line_naming_the_host(executor):
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as info:
        executor.run(["sleep", "4"], timeout=0.5)  # over SSH it is not killed: keep it short
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith(f"host {executor.host}") and "within 0.5 s" in message and "\n" not in message


# --------------------------------------------------------------------------- sessions


def test_session_streams_lines_in_order_before_exit(executor, tmp_path):
    # Lines are written in pieces (a partial line, a flush, a pause) and must come back whole.
    code = textwrap.dedent(
        """
        import sys, time
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(300):
            sys.stdout.write(f"line {i} "); sys.stdout.flush()
            if i % 100 == 0:
                time.sleep(0.05)
            sys.stdout.write("end\\n")
        sys.stdout.write("no newline at the end"); sys.stdout.flush()
        """
    )
    session = executor.start([PY, "-c", code], env={}, cwd=None)
    lines = LineReader(session)
    assert lines.next() == "ready"  # arrives while the process still waits for us
    assert session.wait(timeout=0.1) is None
    session.write("go\n")
    rest = lines.rest()
    assert rest == [f"line {i} end" for i in range(300)] + ["no newline at the end"]
    assert session.wait(timeout=10) == 0


def test_close_stdin_gives_eof_and_exit_code_without_echo(executor, tmp_path):
    marker = tmp_path / "eof"
    session = executor.start([PY, "-c", ECHO_UNTIL_EOF, str(marker)], env={}, cwd=None)
    lines = LineReader(session)
    assert lines.next().startswith("pid ")
    session.write("hello\n")
    assert lines.next() == "got 5 hello"
    spec = json.dumps({"x": "y" * 100_000})  # a big first line goes through quickly
    started = time.monotonic()
    session.write(spec + "\n")
    assert lines.next() == f"got {len(spec)} " + spec[:20]
    assert time.monotonic() - started < 5
    session.close_stdin()
    session.close_stdin()  # idempotent
    assert lines.rest() == []  # nothing we wrote is echoed back
    assert session.wait(timeout=10) == 7
    assert marker.read_text() == "eof"
    with pytest.raises(BrokenPipeError):
        session.write("late\n")


def test_stderr_is_kept_apart_from_stdout_lines(executor):
    code = (
        "import sys\n"
        "for i in range(3):\n"
        "    print('out', i, flush=True); print('err', i, file=sys.stderr, flush=True)\n"
    )
    got = []
    session = executor.start([PY, "-c", code], env={"X": "1"}, cwd=None, on_stderr=got.append)
    assert LineReader(session).rest() == ["out 0", "out 1", "out 2"]
    assert session.wait(timeout=10) == 0
    assert got == ["err 0", "err 1", "err 2"]
    assert session.stderr_tail(2) == ["err 1", "err 2"]


def test_start_env_and_cwd(executor, tmp_path):
    code = "import os; print(os.getcwd()); print(os.environ['MSG'])"
    session = executor.start([PY, "-c", code], env={"MSG": "a 'b' $c"}, cwd=str(tmp_path))
    assert LineReader(session).rest() == [str(tmp_path), "a 'b' $c"]
    assert session.wait(timeout=10) == 0


def test_start_missing_program_exits_127(executor, tmp_path):
    agent = str(tmp_path / "no-such-agent")
    session = executor.start([agent], env={}, cwd=None, on_stderr=lambda line: None)
    assert LineReader(session).rest() == []
    assert session.wait(timeout=10) == 127
    assert any("no-such-agent" in line for line in session.stderr_tail())


def test_process_leads_its_own_session_and_group(executor):
    """So that a second command (`kill -TERM -<pid>`) can stop the process and all its children."""
    code = "import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"
    session = executor.start([PY, "-c", code], env={}, cwd=None)
    pid, pgid, sid = LineReader(session).next().split()
    assert pid == pgid == sid
    assert session.wait(timeout=10) == 0


def test_wait_with_timeout_returns_none_then_the_code(executor):
    session = executor.start(["sh", "-c", "read x; exit 5"], env={}, cwd=None)
    assert session.wait(timeout=0.2) is None
    session.close_stdin()
    assert session.wait(timeout=10) == 5


# --------------------------------------------------------------------------- the launcher dies


CLIENT = textwrap.dedent(
    """
    import json, sys, time
    from launcher.executor import LocalExecutor, SSHExecutor
    from launcher.spec import SSHSpec
    args = json.loads(sys.argv[1])
    if args["ssh"]:
        ex = SSHExecutor(args["host"], SSHSpec(**args["ssh"]))
    else:
        ex = LocalExecutor()
    session = ex.start(args["argv"], env={}, cwd=None)
    print(next(session.lines()), flush=True)
    time.sleep(600)
    """
)


def test_killed_launcher_gives_the_process_eof(executor, tmp_path):
    """A launcher killed by SIGKILL (no cleanup at all): the agent still sees EOF on stdin."""
    marker = tmp_path / "eof"
    ssh = None
    if isinstance(executor, SSHExecutor):
        ssh = {k: getattr(executor.ssh, k) for k in ("user", "port", "key_file", "known_hosts")}
    args = {"host": executor.host, "ssh": ssh, "argv": [PY, "-c", ECHO_UNTIL_EOF, str(marker)]}
    client = subprocess.Popen(
        [PY, "-c", CLIENT, json.dumps(args)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )
    try:
        first = client.stdout.readline()
        assert first.startswith("pid "), first
        agent_pid = int(first.split()[1])
        assert not marker.exists()
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
        assert wait_for(marker.exists, 10), "the process never saw EOF after its launcher died"
        assert wait_for(lambda: not _alive(agent_pid), 10)
    finally:
        if client.poll() is None:
            client.kill()
        client.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- SSH only


@pytest.mark.ssh
def test_dropped_connection_gives_the_remote_process_eof(sshd, tmp_path):  # noqa: F811
    marker = tmp_path / "eof"
    ex = SSHExecutor(sshd.address, sshd.ssh_spec())
    session = ex.start([PY, "-c", ECHO_UNTIL_EOF, str(marker)], env={}, cwd=None)
    lines = LineReader(session)
    agent_pid = int(lines.next().split()[1])
    session.write("x\n")
    assert lines.next() == "got 1 x"
    ex.close()  # the connection goes away without any close_stdin()
    assert wait_for(marker.exists, 10), "the remote process never saw EOF after the connection dropped"
    assert wait_for(lambda: not _alive(agent_pid), 10)
    assert lines.rest() == []
    assert session.wait(timeout=5) == -1  # no exit status over a dead connection


@pytest.mark.ssh
def test_remote_process_has_no_pty_and_is_sshds_direct_child(sshd):  # noqa: F811
    ex = SSHExecutor(sshd.address, sshd.ssh_spec())
    code = (
        "import os, json; ppid = os.getppid();"
        "print(json.dumps([os.isatty(0), os.isatty(1), open(f'/proc/{ppid}/comm').read().strip(),"
        " open('/proc/self/stat').read().rsplit(')', 1)[1].split()[4]]))"
    )
    try:
        result = ex.run([PY, "-c", code], timeout=10)
        session = ex.start([PY, "-c", code], env={"A": "b"}, cwd="/")
        streamed = LineReader(session).rest()
        assert session.wait(timeout=10) == 0
    finally:
        ex.close()
    # No pty (tty_nr 0), and the program replaced the login shell: no sudo, shell or wrapper.
    for seen in (json.loads(result.stdout), json.loads(streamed[0])):
        stdin_tty, stdout_tty, parent, tty_nr = seen
        assert (stdin_tty, stdout_tty, tty_nr) == (False, False, "0")
        assert parent.startswith("sshd"), parent  # "sshd" (OpenSSH < 9.8) or "sshd-session"


@pytest.mark.ssh
def test_ssh_signal_death_gives_minus_one_local_gives_minus_signal(sshd):  # noqa: F811
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    local = LocalExecutor().start([PY, "-c", code], env={}, cwd=None)
    assert local.wait(timeout=10) == -signal.SIGKILL
    ex = SSHExecutor(sshd.address, sshd.ssh_spec())
    try:
        remote = ex.start([PY, "-c", code], env={}, cwd=None)
        assert remote.wait(timeout=10) == -1
    finally:
        ex.close()


@pytest.mark.ssh
def test_connection_is_reused_and_reopened(sshd):  # noqa: F811
    ex = SSHExecutor(sshd.address, sshd.ssh_spec())
    try:
        first = ex.connect()
        assert ex.run(["true"], timeout=10).exit_code == 0
        assert ex.connect() is first
        first.transport.close()  # dropped under us: the next command reconnects
        assert ex.run(["echo", "again"], timeout=10).stdout == "again\n"
    finally:
        ex.close()


# --------------------------------------------------------------------------- pre-flight


def one_line_about(info: pytest.ExceptionInfo, label: str) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"host {label}: "), message
    return message


def test_check_host_passes_with_our_interpreter(executor, tmp_path):
    import importlib.metadata

    version = check_host(executor, PY, timeout=20, env={"PYTHONPATH": REPO_ROOT}, cwd=str(tmp_path))
    assert version == importlib.metadata.version("mindspore")  # the pre-flight names the host's MindSpore


def test_check_host_names_a_missing_interpreter(executor, tmp_path):
    missing = str(tmp_path / "bin" / "python3")
    with pytest.raises(HostUnreachable) as info:
        check_host(executor, missing, timeout=20)
    label = getattr(executor, "label", executor.host)
    message = one_line_about(info, label)
    assert f"python interpreter {missing} not found" in message


def test_check_host_names_an_interpreter_without_our_packages(executor, tmp_path):
    venv = tmp_path / "bare"
    base = getattr(sys, "_base_executable", PY)  # a python outside our venv
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    with pytest.raises(HostUnreachable) as info:
        check_host(executor, python, timeout=20, cwd=str(tmp_path))  # cwd: not the repository
    message = one_line_about(info, getattr(executor, "label", executor.host))
    assert f"{python} is not ready for mscluster: " in message and "No module named 'launcher'" in message


@pytest.mark.ssh
def test_refused_connection(sshd):  # noqa: F811
    port = free_port()
    ex = SSHExecutor("127.0.0.1", sshd.ssh_spec(port=port))
    with pytest.raises(HostUnreachable) as info:
        check_host(ex, PY, timeout=10)
    assert "connection refused" in one_line_about(info, f"127.0.0.1:{port}")


@pytest.mark.ssh
def test_server_that_never_answers_times_out_in_connect_timeout(sshd):  # noqa: F811
    with socket.socket() as silent:  # accepts TCP (kernel backlog) but never sends a banner
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        ex = SSHExecutor("127.0.0.1", sshd.ssh_spec(port=port, connect_timeout=1.0))
        started = time.monotonic()
        with pytest.raises(HostUnreachable) as info:
            ex.run(["true"], timeout=10)
        elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 4, elapsed
    assert "no SSH server answered within 1 s" in one_line_about(info, f"127.0.0.1:{port}")


@pytest.mark.ssh
def test_refused_key(sshd, tmp_path):  # noqa: F811
    other = keygen(tmp_path / "other_key", "not-authorized")
    ex = SSHExecutor(sshd.address, sshd.ssh_spec(key_file=str(other)))
    with pytest.raises(HostUnreachable) as info:
        check_host(ex, PY, timeout=10)
    message = one_line_about(info, f"{sshd.address}:{sshd.port}")
    assert message.endswith(f"authentication failed for user {sshd.user} with key {other} (refused key)")


@pytest.mark.ssh
def test_missing_key_file(sshd, tmp_path):  # noqa: F811
    ex = SSHExecutor(sshd.address, sshd.ssh_spec(key_file=str(tmp_path / "nokey")))
    with pytest.raises(HostUnreachable) as info:
        ex.run(["true"], timeout=10)
    assert "key file" in one_line_about(info, f"{sshd.address}:{sshd.port}")


@pytest.mark.ssh
def test_unknown_host_key_is_refused_with_strict_checking(sshd, tmp_path):  # noqa: F811
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ex = SSHExecutor(sshd.address, sshd.ssh_spec(known_hosts=str(empty)))
    with pytest.raises(HostUnreachable) as info:
        check_host(ex, PY, timeout=10)
    message = one_line_about(info, f"{sshd.address}:{sshd.port}")
    assert f"host key unknown: no entry for this host in {empty}" in message
    assert empty.read_text() == ""  # nothing was added


@pytest.mark.ssh
def test_a_host_key_added_to_known_hosts_is_seen_by_the_next_connection(sshd, tmp_path):  # noqa: F811
    """known_hosts is parsed once and shared by every host's connection, but never served stale."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostUnreachable):
        SSHExecutor(sshd.address, sshd.ssh_spec(known_hosts=str(known))).run(["true"], timeout=10)
    known.write_text(Path(sshd.known_hosts).read_text())  # ssh-keyscan's doing, between two launches
    ex = SSHExecutor(sshd.address, sshd.ssh_spec(known_hosts=str(known)))
    try:
        assert ex.run(["true"], timeout=10).exit_code == 0
    finally:
        ex.close()


@pytest.mark.ssh
def test_changed_host_key_is_refused(sshd, tmp_path):  # noqa: F811
    other = keygen(tmp_path / "other_host_key", "impostor")
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{sshd.address}]:{sshd.port} {kind} {blob}\n")
    ex = SSHExecutor(sshd.address, sshd.ssh_spec(known_hosts=str(wrong)))
    with pytest.raises(HostUnreachable) as info:
        ex.run(["true"], timeout=10)
    assert "host key does not match" in one_line_about(info, f"{sshd.address}:{sshd.port}")


@pytest.mark.ssh
def test_missing_known_hosts_file_is_named(sshd, tmp_path):  # noqa: F811
    ex = SSHExecutor(sshd.address, sshd.ssh_spec(known_hosts=str(tmp_path / "absent")))
    with pytest.raises(HostUnreachable) as info:
        ex.run(["true"], timeout=10)
    assert "known_hosts file" in one_line_about(info, f"{sshd.address}:{sshd.port}")


@pytest.mark.ssh
def test_lax_host_keys_connect_with_a_warning(sshd, tmp_path, caplog):  # noqa: F811
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ex = SSHExecutor(sshd.address, sshd.ssh_spec(known_hosts=str(empty), strict_host_keys=False))
    try:
        with caplog.at_level("WARNING", logger="launcher.executor"):
            assert ex.run(["echo", "ok"], timeout=10).stdout == "ok\n"
    finally:
        ex.close()
    assert any("host key not checked" in r.getMessage() for r in caplog.records)
    assert empty.read_text() == ""  # the accepted key is not written anywhere


@pytest.mark.netns
def test_unreachable_address_times_out_in_connect_timeout(tmp_path):
    """An address on our own bridge with no host behind it (ARP gets no answer)."""
    from netns_util import netns_lab

    with netns_lab(tmp_path / "lab", count=1) as lab:
        ex = SSHExecutor(lab.unused_address, lab.ssh_spec(connect_timeout=0.5))
        started = time.monotonic()
        with pytest.raises(HostUnreachable) as info:
            check_host(ex, PY, timeout=10)
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2.5, elapsed  # before the kernel gives up on ARP (~3 s: "no route")
    message = one_line_about(info, f"{lab.unused_address}:{lab.hosts[0].sshd.port}")
    assert message.endswith("connection timed out after 0.5 s")


def test_parallel_sessions_do_not_mix(executor):
    """Several sessions on one executor (one SSH connection): each gets only its own output."""
    code = "import sys\nn = sys.argv[1]\nfor i in range(200):\n    print(n, i, flush=True)\n"
    sessions = [executor.start([PY, "-c", code, str(n)], env={}, cwd=None) for n in range(4)]
    readers = [LineReader(s) for s in sessions]  # all read at once
    for n, (session, reader) in enumerate(zip(sessions, readers)):
        assert reader.rest(timeout=30) == [f"{n} {i}" for i in range(200)]
        assert session.wait(timeout=10) == 0
