"""Feature: one launcher runs a fleet: 8 SSH hosts x 8 ranks, and a failure anywhere stops it all.

Description: eight network-namespace hosts, each with its own sshd, address and host key checked
strictly (``tests/netns_util.py``). The ranks are ``tests/fleet_rank.py`` through ``command:``
(``mscluster.rank``, no MindSpore), under ``backend: ascend`` with the device IPs in the file
(``--skip-preflight``: the stand-in hosts have no NPU tools);
the last test trains the built-in trainer with real MindSpore, one rank on each of 4 hosts.
Expectation: the 64-rank job succeeds with every rank's steps in status and its lines in the logs;
a rank failing on host 5 stops every rank on every host within seconds, is named as the root
cause, and leaves nothing in any namespace; the 4-host MindSpore job ends with one set of weights.
(How these figures grow to 64 hosts: ``scripts/bench_scale.py``.)
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest

from fleet_util import RANKS_PER_HOST, fleet_cluster, leftovers
from helpers import all_log, final_digests, job_processes, only_job_dir, run_launch, write_cluster

pytestmark = [pytest.mark.netns, pytest.mark.integration]


def _result(job: str) -> dict:
    with open(os.path.join(job, "result.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_an_8_host_fleet_of_64_ranks_succeeds_and_leaves_nothing(fleet_hosts, tmp_path):
    lab = fleet_hosts
    hosts = [h.address for h in lab.hosts]
    cluster = fleet_cluster(str(tmp_path / "fleet.yaml"), hosts, lab, str(tmp_path / "runs"),
                            fleet_args=["--steps", "10", "--step-rate", "10", "--lines-per-s", "20"])
    proc = run_launch(cluster, "--skip-preflight", cwd=str(tmp_path), console="0", timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = only_job_dir(str(tmp_path / "runs"))
    with open(os.path.join(job, "status.json"), encoding="utf-8") as handle:
        status = json.load(handle)
    ranks = {name: p for name, p in status["processes"].items() if p["rank"] is not None}
    assert len(ranks) == len(hosts) * RANKS_PER_HOST == 64
    assert {p["state"] for p in ranks.values()} == {"succeeded"}
    assert {p["global_step"] for p in ranks.values()} == {10}
    for i, host in enumerate(hosts):  # ranks 8i..8i+7 ran on host i, and each one's lines reached all.log
        assert {p["host"] for p in ranks.values() if p["rank"] // RANKS_PER_HOST == i} == {host}
    log = all_log(job)
    done = set(re.findall(r"^\[([\d.]+):(\d+)\] fleet rank=\2 done steps=10$", log, re.M))
    assert done == {(hosts[r // RANKS_PER_HOST], str(r)) for r in range(64)}
    assert len(re.findall(r"^\[[\d.]+:\d+\] fleet rank=\d+ line=\d+ t=", log, re.M)) >= 64 * 15
    with open(os.path.join(job, "rank_table.json"), encoding="utf-8") as handle:
        table = json.load(handle)
    assert [s["server_id"] for s in table["server_list"]] == hosts
    attempt = _result(job)["attempts"][0]
    assert 0 < attempt["started_s"] <= attempt["first_progress_s"]
    assert leftovers(lab) == {} and job_processes(job) == []


def test_a_rank_failing_on_host_5_stops_every_rank_on_every_host(fleet_hosts, tmp_path):
    lab = fleet_hosts
    hosts = [h.address for h in lab.hosts]
    culprit = 5 * RANKS_PER_HOST + 3  # host 5's fourth rank
    cluster = fleet_cluster(str(tmp_path / "fleet.yaml"), hosts, lab, str(tmp_path / "runs"),
                            fleet_args=["--steps", "1000", "--step-rate", "5", "--fail-step", "4",
                                        "--fail-rank", str(culprit)])
    began = time.monotonic()
    proc = run_launch(cluster, "--skip-preflight", cwd=str(tmp_path), console="0", timeout=240)
    elapsed = time.monotonic() - began
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < 60, f"the other ranks had 200 s to go; the job took {elapsed:.0f} s"
    job = only_job_dir(str(tmp_path / "runs"))
    result = _result(job)
    root = result["failures"][0]
    assert (root["rank"], root["host"], root["during_teardown"]) == (culprit, hosts[5], False)
    assert "InjectedFailure: injected failure at step 4 on rank 43" in root["message"]
    assert [f["rank"] for f in result["failures"] if not f["during_teardown"]] == [culprit]
    assert result["attempts"][0]["detect_s"] < 2.0
    with open(os.path.join(job, "status.json"), encoding="utf-8") as handle:
        states = {n: p["state"] for n, p in json.load(handle)["processes"].items()}
    assert states.pop(f"rank{culprit}") == "failed"
    assert set(states.values()) == {"stopped"}
    # the table on the terminal names it first
    assert re.search(rf"root cause \({re.escape(hosts[5])}, rank{culprit}\)", proc.stdout + proc.stderr)
    assert leftovers(lab) == {} and job_processes(job) == []


@pytest.mark.mindspore
def test_real_mindspore_on_4_hosts_ends_with_one_set_of_weights(fleet_hosts, tmp_path, cifar_dir):
    """Four of the eight: nine MindSpore processes (eight and the scheduler) would share 2 cores for a minute."""
    lab = fleet_hosts
    spec = lab.ssh_spec()
    hosts = [{"address": h.address, "devices": 1} for h in lab.hosts[:4]]
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, hosts=hosts, python=sys.executable,
                            train={"width": 4, "steps_per_epoch": 2, "batch_size": 8},
                            env={"MS_TOPO_TIMEOUT": "240"},
                            ssh={"user": spec.user, "port": spec.port, "key_file": spec.key_file,
                                 "connect_timeout": 20, "known_hosts": spec.known_hosts,
                                 "keepalive_count": 12})
    proc = run_launch(cluster, "--skip-preflight", cwd=str(tmp_path), console="0", timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    job = only_job_dir(str(tmp_path / "runs"))
    digests = final_digests(job)
    assert sorted(digests) == sorted(f"{h['address']}:{r}" for r, h in enumerate(hosts)), digests
    assert len(set(digests.values())) == 1, digests
    assert leftovers(lab) == {} and job_processes(job) == []
