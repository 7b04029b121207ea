"""Feature: ``mscluster launch`` and ``ranktable`` over real SSH (private sshd servers, fabric).

Description: a private sshd on 127.0.0.2 (any address but localhost/127.0.0.1 goes over SSH) starts
2 ranks of a one-line program, and trains until the launcher's SIGKILL drops its connection; a host
with nothing listening and a refused key fail the
pre-flight; a fake ``hccn_tool`` on the remote PATH feeds the rank table; two network namespaces
with their own addresses and sshd run a job of 2 ranks each whose gradients are averaged through
each host's shared memory and by an allreduce between the hosts.
Expectation: the SSH job succeeds, each rank reached through sshd with the key; the dropped
connection takes the remote ranks down; pre-flight failures are
one line naming the host, exit 3, and nothing starts on the good host; the rank table holds the
IPs the tool printed; the 2-host job's 4 ranks end with identical weights.
"""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys

import pytest
import yaml

from helpers import job_processes, kill_group, launch_argv, only_job_dir, run_launch, wait_for, write_cluster
from sshd_util import keygen, running_sshd

pytestmark = [pytest.mark.integration, pytest.mark.ssh]


def _ssh_fields(server, **changes):
    spec = server.ssh_spec(**changes)
    return {"user": spec.user, "port": spec.port, "key_file": spec.key_file, "connect_timeout": spec.connect_timeout,
            "strict_host_keys": spec.strict_host_keys, "known_hosts": spec.known_hosts}


@pytest.fixture(scope="module")
def sshd_127_0_0_2(tmp_path_factory):
    with running_sshd(tmp_path_factory.mktemp("sshd2"), address="127.0.0.2") as server:
        yield server


def test_job_runs_through_sshd(sshd_127_0_0_2, tmp_path, cifar_dir):
    """Both ranks start through sshd with the key (a program of a line each; MindSpore training over SSH
    is the netns tests' below)."""
    program = ("import os; from mscluster.rank import rank_info; i = rank_info(); "
               "print('rank', i.rank, 'of', i.world_size, 'via', os.environ['SSH_CONNECTION'].split()[2])")
    cluster = str(tmp_path / "c.yaml")
    with open(cluster, "w", encoding="utf-8") as handle:
        yaml.safe_dump({"name": "t", "backend": "cpu", "workdir": str(tmp_path / "runs"), "python": sys.executable,
                        "hosts": [{"address": "127.0.0.2", "devices": 2}], "ssh": _ssh_fields(sshd_127_0_0_2),
                        "command": ["python", "-c", program]}, handle)
    proc = run_launch(cluster, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = only_job_dir(str(tmp_path / "runs"))
    assert json.load(open(os.path.join(job, "result.json")))["status"] == "succeeded"
    said = re.findall(r"^\[127\.0\.0\.2:(\d)\] rank (\d) of 2 via 127\.0\.0\.2$", proc.stdout, re.M)
    assert sorted(said) == [("0", "0"), ("1", "1")], proc.stdout[-3000:]
    assert "Accepted publickey" in sshd_127_0_0_2.log_text()
    assert job_processes(job) == []


def test_dropped_ssh_connection_takes_the_remote_ranks_down(sshd_127_0_0_2, tmp_path, cifar_dir):
    """kill -9 of the launcher drops its SSH connection: the remote agent must stop its ranks."""
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, hosts=[{"address": "127.0.0.2", "devices": 2}],
                            ssh=_ssh_fields(sshd_127_0_0_2), python=sys.executable,
                            train={"steps_per_epoch": 400})
    proc = subprocess.Popen(launch_argv(cluster), cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    runs = str(tmp_path / "runs")
    try:
        job = wait_for(lambda: os.path.isdir(runs) and os.listdir(runs) and only_job_dir(runs), 60, what="job dir")
        log = os.path.join(job, "logs", "rank_1.log")
        wait_for(lambda: os.path.exists(log) and "global_step=2 " in open(log).read(), 180, what="training")
        remote = job_processes(job)
        assert len(remote) >= 3 and all(p.ppid() != proc.pid for p in remote)  # they hang off sshd
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for(lambda: job_processes(job) == [], 30, what="the remote ranks to stop")
    finally:
        kill_group(proc)


def test_unreachable_host_fails_preflight_and_starts_nothing(sshd_127_0_0_2, tmp_path, cifar_dir):
    hosts = [{"address": "127.0.0.2", "devices": 1}, {"address": "127.0.0.3", "devices": 1}]  # .3: no sshd
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, hosts=hosts,
                            ssh=_ssh_fields(sshd_127_0_0_2), python=sys.executable)
    proc = run_launch(cluster, cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.3" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "runs")  # no job folder: nothing started anywhere


def test_refused_key_is_one_line_naming_the_host(sshd_127_0_0_2, tmp_path, cifar_dir):
    stranger = keygen(tmp_path / "stranger", "not-authorized")
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, hosts=[{"address": "127.0.0.2", "devices": 2}],
                            ssh=_ssh_fields(sshd_127_0_0_2, key_file=str(stranger)), python=sys.executable)
    proc = run_launch(cluster, cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.2" in lines[0] and "refused key" in lines[0], proc.stderr


FAKE_HCCN_TOOL = """#!/bin/sh
# Stand-in for Ascend's hccn_tool: prints exactly what `hccn_tool -i <id> -ip -g` prints.
if [ "$1" = "-i" ] && [ "$3" = "-ip" ] && [ "$4" = "-g" ]; then
    printf 'ipaddr:192.98.92.%d\\nnetmask:255.255.255.0\\n' $((100 + $2))
    exit 0
fi
echo "usage: hccn_tool -i <id> -ip -g" >&2
exit 1
"""


def test_ranktable_discovers_device_ips_over_ssh(tmp_path):
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    tool = fakebin / "hccn_tool"
    tool.write_text(FAKE_HCCN_TOOL)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    # the remote login's PATH holds the fake tool, as an Ascend server's holds the real one
    with running_sshd(tmp_path / "sshd", address="127.0.0.2",
                      extra_config=[f"SetEnv PATH={fakebin}:/usr/local/bin:/usr/bin:/bin"]) as server:
        cluster = tmp_path / "ascend.yaml"
        import yaml
        yaml.safe_dump({"name": "npu", "backend": "ascend", "python": sys.executable,
                        "hosts": [{"address": "127.0.0.2", "devices": [0, 1, 2, 3]}],
                        "ssh": _ssh_fields(server)}, open(cluster, "w"))
        out = tmp_path / "rank_table.json"
        proc = subprocess.run([sys.executable, "-m", "mscluster_cli", "ranktable", str(cluster), "-o", str(out)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    table = json.load(open(out))
    assert table == {"version": "1.0", "server_count": "1", "status": "completed", "server_list": [
        {"server_id": "127.0.0.2", "host_nic_ip": "reserve", "device": [
            {"device_id": str(d), "device_ip": f"192.98.92.{100 + d}", "rank_id": str(d)} for d in range(4)]}]}


@pytest.mark.netns
def test_two_hosts_in_network_namespaces_train_one_model(netns_hosts, tmp_path, cifar_dir):
    """2 hosts x 2 ranks: the ranks of each host average through shared memory, the hosts through
    MindSpore's AllReduce between the ranks of one local index (the default exchange on cpu)."""
    lab = netns_hosts
    spec = lab.ssh_spec()
    hosts = [{"address": h.address, "devices": 2} for h in lab.hosts[:2]]
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, hosts=hosts, python=sys.executable,
                            ssh={"user": spec.user, "port": spec.port, "key_file": spec.key_file,
                                 "connect_timeout": 5, "known_hosts": spec.known_hosts})
    proc = run_launch(cluster, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    a, b = lab.hosts[0].address, lab.hosts[1].address
    digests = []
    for rank, host in enumerate((a, a, b, b)):
        found = re.search(rf"^\[{re.escape(host)}:{rank}\] final rank={rank} .*weights_sha256=(\w+)$", proc.stdout, re.M)
        assert found, proc.stdout[-3000:]
        digests.append(found.group(1))
        assert re.search(rf"^\[{re.escape(host)}:{rank}\] gradient exchange: shared_memory$", proc.stdout, re.M)
    assert len(set(digests)) == 1, f"the ranks ended with different weights: {digests}"
    job = only_job_dir(str(tmp_path / "runs"))
    assert job_processes(job) == []
