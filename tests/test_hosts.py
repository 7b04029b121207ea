"""The one seam between a cluster file's ``scheduler:`` and the hosts' executors (launcher/hosts.py), and the
connection an agent started by a scheduler makes back to its launcher (launcher/connect_back.py).

Real sockets and the real Slurm code outside an allocation; Slurm inside one is tests/test_slurm.py.
"""
from __future__ import annotations

import socket
import threading

import pytest

from launcher.config import parse_cluster
from launcher.connect_back import CONNECT_ENV, TOKEN_ENV, connect_back, read_hello
from launcher.errors import ConfigError
from launcher.executor import LocalExecutor
from launcher.hosts import SCHEDULERS, open_hosts, preview_hosts, scheduler_for
from launcher.slurm.allocation import SlurmError

LOCAL = "name: j\nbackend: cpu\nhosts:\n  - {address: localhost, devices: [0, 1]}\n"
SLURM = "name: j\nbackend: cpu\nscheduler: slurm\nslurm: {nodes: 3, devices_per_host: 2}\n"


def test_every_scheduler_a_cluster_file_accepts_has_its_entry():
    for text in (LOCAL, SLURM):
        assert scheduler_for(parse_cluster(text, "c.yaml")) in SCHEDULERS.values()
    assert [name for name, s in SCHEDULERS.items() if s.submits] == ["slurm"]  # what `mscluster submit` accepts


def test_hosts_of_a_hosts_list_are_the_files_with_a_local_executor_each():
    cluster = parse_cluster(LOCAL, "c.yaml")
    hosts = open_hosts(cluster, {})
    assert hosts.cluster == cluster and hosts.where == ""
    assert list(hosts.executors) == ["localhost"] and isinstance(hosts.executors["localhost"], LocalExecutor)
    assert hosts.executors["localhost"].run(["echo", "hi"], timeout=10).stdout == "hi\n"
    hosts.close()


def test_the_executor_seam_reaches_every_host_of_a_hosts_list():
    cluster = parse_cluster("name: j\nbackend: cpu\nssh: {strict_host_keys: false}\nhosts:\n"
                            "  - {address: 10.0.0.1, devices: [0]}\n  - {address: 10.0.0.2, devices: [0]}\n", "c.yaml")
    asked = []
    hosts = open_hosts(cluster, {}, make_executor=lambda host, ssh: asked.append(host.address) or LocalExecutor(host.address))
    assert asked == ["10.0.0.1", "10.0.0.2"] and list(hosts.executors) == asked


def test_ssh_files_are_checked_before_any_executor_exists(tmp_path):
    cluster = parse_cluster(f"name: j\nbackend: cpu\nssh: {{key_file: {tmp_path}/none}}\nhosts:\n"
                            "  - {address: 10.0.0.1, devices: [0]}\n", "c.yaml")
    made = []
    with pytest.raises(ConfigError, match=r"c.yaml: ssh.key_file: .*/none does not exist"):
        open_hosts(cluster, {}, make_executor=lambda host, ssh: made.append(host))
    assert made == []


def test_slurm_outside_an_allocation_is_refused_for_a_launch_and_shown_on_placeholders_by_plan():
    cluster = parse_cluster(SLURM, "c.yaml")
    with pytest.raises(SlurmError, match="not inside a Slurm allocation"):
        open_hosts(cluster, {"PATH": "/usr/bin:/bin"})
    placed, note = preview_hosts(cluster, {})
    assert [h.node for h in placed.hosts] == ["node1", "node2", "node3"]
    assert [h.devices for h in placed.hosts] == [(0, 1)] * 3
    assert "outside an allocation" in note


def _listener():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    return server, {CONNECT_ENV: f"127.0.0.1:{server.getsockname()[1]}", TOKEN_ENV: "secret",
                    "SLURMD_NODENAME": "n2", "SLURM_STEP_ID": "7"}


def test_an_agent_connects_back_with_its_hello_and_the_protocol_follows_untouched():
    server, env = _listener()
    with server:
        agent: list[socket.socket] = []
        thread = threading.Thread(target=lambda: agent.append(connect_back(env)))
        thread.start()
        conn, _ = server.accept()
        thread.join(10)
        agent[0].sendall(b'{"first": "protocol line"}\n')
        hello = read_hello(conn, "secret")
        assert hello is not None and hello["node"] == "n2" and hello["step"] == "7"
        assert conn.recv(100) == b'{"first": "protocol line"}\n'  # nothing after the hello was consumed
        conn.close()
        agent[0].close()


def test_a_connection_without_the_token_is_refused():
    server, env = _listener()
    with server:
        for token in ("wrong", "séçret"):
            sock = connect_back({**env, TOKEN_ENV: token})
            conn, _ = server.accept()
            assert read_hello(conn, "secret") is None
            conn.close()
            sock.close()
        raw = socket.create_connection(server.getsockname())
        raw.sendall(b"not json\n")
        conn, _ = server.accept()
        assert read_hello(conn, "secret") is None
        conn.close()
        raw.close()


def test_outside_a_scheduler_an_agent_does_not_connect_anywhere():
    assert connect_back({}) is None
