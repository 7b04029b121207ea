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
import time

import pytest
import yaml

from helpers import (job_processes, kill_group, launch_argv, only_job_dir, rank_step, run_launch, start_launch, wait_for,
                     write_cluster)
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


# 2 hosts x 2 ranks, a checkpoint every 4 of 24 steps: long enough to unplug a host after a checkpoint
TWO_HOST_TRAIN = {"steps_per_epoch": 24, "save_every_steps": 4}


def _two_host_cluster(lab, path: str, cifar_dir: str, hosts, **fields) -> str:
    spec = lab.ssh_spec()
    return write_cluster(path, cifar_dir, hosts=[{"address": h.address, "devices": 2} for h in hosts],
                         python=sys.executable, train=TWO_HOST_TRAIN,
                         ssh={"user": spec.user, "port": spec.port, "key_file": spec.key_file, "connect_timeout": 5,
                              "known_hosts": spec.known_hosts, "keepalive_interval": 1, "keepalive_count": 3},
                         **fields)


def _final_digests(out: str, hosts) -> list[str]:
    """Each rank's weights digest from its last ``final`` line, rank 0 first (``[host:rank] final ...``)."""
    digests = []
    for rank, host in enumerate(hosts):
        found = re.findall(rf"^\[{re.escape(host)}:{rank}\] final rank={rank} .*weights_sha256=(\w+)$", out, re.M)
        assert found, f"no final line of rank {rank} on {host}: " + out[-3000:]
        digests.append(found[-1])
    return digests


@pytest.fixture(scope="module")
def fault_free_two_hosts(netns_hosts, tmp_path_factory, cifar_dir):
    """The 2-host job without a fault: its output, and the hosts its ranks ran on."""
    tmp = tmp_path_factory.mktemp("two-hosts")
    lab = netns_hosts
    cluster = _two_host_cluster(lab, str(tmp / "c.yaml"), cifar_dir, lab.hosts[:2])
    proc = run_launch(cluster, cwd=str(tmp))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    a, b = lab.hosts[0].address, lab.hosts[1].address
    return proc, (a, a, b, b), only_job_dir(str(tmp / "runs"))


@pytest.mark.netns
def test_two_hosts_in_network_namespaces_train_one_model(fault_free_two_hosts):
    """2 hosts x 2 ranks: the ranks of each host average through shared memory, the hosts through
    MindSpore's AllReduce between the ranks of one local index (the default exchange on cpu)."""
    proc, hosts, job = fault_free_two_hosts
    digests = _final_digests(proc.stdout, hosts)
    for rank, host in enumerate(hosts):
        assert re.search(rf"^\[{re.escape(host)}:{rank}\] gradient exchange: shared_memory$", proc.stdout, re.M)
    assert len(set(digests)) == 1, f"the ranks ended with different weights: {digests}"
    assert job_processes(job) == []


@pytest.mark.netns
def test_a_spare_takes_the_place_of_a_host_lost_for_good_and_the_weights_are_the_fault_free_ones(
        netns_hosts, fault_free_two_hosts, tmp_path, cifar_dir):
    """A spare that does not answer stands down at the start. Host b's network goes down for good after a
    checkpoint: it is named lost within the keepalive window, excluded, and the spare c takes its ranks 2 and 3
    (devices 0 and 1); the job resumes from the checkpoint and ends with the very weights of the run without a
    fault. Nothing of the job is left on b."""
    lab = netns_hosts
    a, b, c = lab.hosts
    # the first spare does not answer: it stands down at the start, and the job runs without it
    cluster = _two_host_cluster(lab, str(tmp_path / "c.yaml"), cifar_dir, (a, b), restarts=1,
                                spares=[{"address": lab.unused_address, "devices": 2},
                                        {"address": c.address, "devices": 2}])
    with open(cluster, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    data["ssh"]["connect_timeout"] = 2
    with open(cluster, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    job = str(tmp_path / "job")
    proc = start_launch(cluster, "--job-dir", job, cwd=str(tmp_path), capture=True)
    try:
        wait_for(lambda: rank_step(job, 2) >= 6 or proc.poll() is not None, 240, what="rank 2 past the first checkpoint")
        assert proc.poll() is None, proc.communicate()
        b.set_link(up=False)
        down_at = time.time()
        out, err = proc.communicate(timeout=240)
    finally:
        kill_group(proc)
        b.set_link(up=True)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    result = json.load(open(os.path.join(job, "result.json")))
    first, second = result["attempts"]
    root = first["root_cause"]
    assert (root["host"], root["name"], root["reason"]) == (b.address, "agent", "lost"), root
    assert "the host or the network to it is down" in root["message"]
    assert root["time"] - down_at <= 3 + 2  # silent past the keepalive window (1 s x 3)
    [change] = first["hosts_changed"]
    assert (change["host"], change["why"], change["move"], change["spare"]) == (b.address, "lost", "replaced", c.address)
    assert f"mscluster: spare {c.address} takes the place of {b.address} (lost: " in err + out
    assert result["hosts"]["active"] == [a.address, c.address] and result["hosts"]["spares"] == []
    assert [(e["host"], e["why"], e["attempt"]) for e in result["hosts"]["excluded"]] == [
        (lab.unused_address, "pre-flight", None), (b.address, "lost", 0)]
    assert f"mscluster: spare {lab.unused_address} stands down (pre-flight: " in err + out
    assert second["ok"] and second["state_from"] == "disk"
    # resumed from a checkpoint of step 4 or later: at most the steps since it are done again
    assert root["last_step"] >= 6 and first["steps_lost"] <= root["last_step"] - 4, first
    hosts = (a.address, a.address, c.address, c.address)
    assert _final_digests(out, hosts) == _final_digests(fault_free_two_hosts[0].stdout, fault_free_two_hosts[1])
    shown = subprocess.run([sys.executable, "-m", "mscluster_cli", "status", job], capture_output=True, text=True,
                           timeout=60).stdout
    assert f"excluded:  {b.address} (lost by attempt 1: agent: no word from the agent" in shown, shown
    assert f"replaced:  {b.address} -> {c.address}" in shown, shown
    # the agent on the unplugged host stopped its ranks by itself: nothing of the job is left anywhere
    wait_for(lambda: job_processes(job) == [], 30, what="the cut-off host's processes to stop")
