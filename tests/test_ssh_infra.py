"""The test infrastructure itself: private sshd servers and network-namespace hosts.

Feature: integration tests log in to real sshd servers on this machine, on loopback and in
network namespaces. Expectation: strict host-key checking works with the known_hosts we write
(OpenSSH's client agrees), each namespace host has its own address and reaches the others, and
everything started is gone afterwards, also when the test body fails.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from launcher.executor import SSHExecutor
from sshd_util import LineReader, require_sshd, running_sshd, skip_or_fail, sshd  # noqa: F401  (sshd is a fixture)

PY = sys.executable
REPO_ROOT = Path(__file__).resolve().parent.parent


def test_skip_or_fail_skips_for_users_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no sshd"):
        skip_or_fail("no sshd")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no sshd"):
        skip_or_fail("no sshd")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail("no sshd")


@pytest.mark.ssh
def test_openssh_client_accepts_the_server_with_strict_host_keys(sshd):  # noqa: F811
    argv = [
        "ssh", "-F", "/dev/null", "-i", sshd.key_file, "-p", str(sshd.port),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "ConnectTimeout=5",
        f"{sshd.user}@{sshd.address}", "echo ok",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


@pytest.mark.ssh
def test_private_sshd_is_stopped_by_pid_with_its_sessions(tmp_path):
    with running_sshd(tmp_path / "srv") as server:
        assert psutil.pid_exists(server.pid)
        ex = SSHExecutor(server.address, server.ssh_spec())
        session = ex.start(["sleep", "60"], env={}, cwd=None)
        deadline = time.monotonic() + 10
        while "sleep" not in _names(children := psutil.Process(server.pid).children(recursive=True)):
            assert time.monotonic() < deadline, "the remote sleep never started"
            time.sleep(0.05)
    assert not psutil.pid_exists(server.pid)  # stopped and reaped
    assert not any(psutil.pid_exists(p.pid) and p.status() != psutil.STATUS_ZOMBIE for p in children)
    with pytest.raises(OSError):
        socket.create_connection((server.address, server.port), timeout=2).close()
    assert session.wait(timeout=10) is not None
    ex.close()


def _names(procs) -> list:
    names = []
    for p in procs:
        try:
            names.append(p.name())
        except psutil.NoSuchProcess:  # sshd's short-lived helpers come and go
            pass
    return names


@pytest.mark.ssh
def test_ci_system_deps_script_finds_everything_installed():
    require_sshd()  # as a user without the tools the script only reports what is missing
    script = REPO_ROOT / "scripts" / "ci_system_deps.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    nothing = "ci_system_deps: nothing to do (sshd, ssh-keygen, ip, curl, pdsh, slurm, munge, chromium present)\n"
    assert (again.returncode, again.stdout) == (0, nothing)


# --------------------------------------------------------------------------- namespaces


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from netns_util import netns_lab

    with netns_lab(tmp_path_factory.mktemp("lab"), count=2) as built:
        yield built


@pytest.mark.netns
def test_each_namespace_host_answers_with_its_own_address(lab):
    assert len({h.address for h in lab.hosts}) == 2
    for host in lab.hosts:
        ex = SSHExecutor(host.address, lab.ssh_spec())
        try:
            assert ex.run(["hostname", "-I"], timeout=10).stdout.split() == [host.address]
            addrs = ex.run(["ip", "-4", "-o", "addr", "show"], timeout=10).stdout
        finally:
            ex.close()
        found = sorted(line.split()[3] for line in addrs.splitlines())
        assert found == sorted(["127.0.0.1/8", f"{host.address}/24"])


@pytest.mark.netns
def test_namespace_hosts_reach_each_other_on_any_port(lab):
    a, b = lab.hosts
    listener = textwrap.dedent(
        """
        import socket, sys
        s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1)
        print(s.getsockname()[1], flush=True)
        conn, peer = s.accept()
        print(peer[0], conn.recv(100).decode(), flush=True)
        """
    )
    connect = "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
    client = connect + "s.sendall(b'ping')"
    ex_a, ex_b = SSHExecutor(a.address, lab.ssh_spec()), SSHExecutor(b.address, lab.ssh_spec())
    try:
        server = ex_b.start([PY, "-c", listener, b.address], env={}, cwd=None)
        lines = LineReader(server)
        port = lines.next()
        sent = ex_a.run([PY, "-c", client, b.address, port], timeout=10)
        assert sent.exit_code == 0, sent.stderr
        assert lines.next() == f"{a.address} ping"  # it came from A's own address
        assert server.wait(timeout=10) == 0
        # B's sshd (another namespace) from A, and A does not see B's address as its own.
        banner = connect + "print(s.recv(7).decode())"
        assert ex_a.run([PY, "-c", banner, b.address, str(b.sshd.port)], timeout=10).stdout == "SSH-2.0\n"
        unreachable = ex_a.run([PY, "-c", banner, "127.0.0.1", str(b.sshd.port)], timeout=10)
        assert unreachable.exit_code != 0 and "refused" in unreachable.stderr.lower()
    finally:
        ex_a.close()
        ex_b.close()


@pytest.mark.netns
def test_lab_is_removed_even_when_the_body_fails(tmp_path):
    from netns_util import netns_lab

    with pytest.raises(RuntimeError, match="boom"):
        with netns_lab(tmp_path / "lab", count=1) as built:
            pids = [h.sshd.pid for h in built.hosts]
            names = [h.netns for h in built.hosts]
            raise RuntimeError("boom")
    netns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in netns_list for name in names)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert built.bridge not in links
    assert not any(psutil.pid_exists(p) for p in pids)
    assert not os.path.exists(f"/run/netns/{names[0]}")


@pytest.mark.netns
def test_a_lab_whose_owner_was_killed_is_reaped_by_the_next_one(tmp_path):
    from netns_util import reap_stale_labs, require_netns

    require_netns()
    owner = subprocess.Popen(
        [PY, "-c", textwrap.dedent(f"""
            import json, sys, time
            sys.path[:0] = [{str(REPO_ROOT / 'tests')!r}, {str(REPO_ROOT)!r}]
            from netns_util import netns_lab
            with netns_lab({str(tmp_path / 'lab')!r}, count=3) as lab:
                print(json.dumps({{"netns": [h.netns for h in lab.hosts], "pids": [h.sshd.pid for h in lab.hosts],
                                  "bridge": lab.bridge}}), flush=True)
                time.sleep(600)
            """)], stdout=subprocess.PIPE, text=True)
    try:
        built = json.loads(owner.stdout.readline())
    finally:
        owner.kill()  # SIGKILL: no teardown of its own runs
        owner.wait()
    assert all(psutil.pid_exists(p) for p in built["pids"])  # left behind, as after a killed run
    assert built["bridge"] in reap_stale_labs()
    netns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in netns_list for ns in built["netns"])
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in built["pids"])
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert built["bridge"] not in links
