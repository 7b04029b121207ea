"""Feature: ``mscluster launch`` on this machine (local hosts run without SSH, through the same agent).

Description: real launches of a 2-rank CPU job: one that succeeds, one whose rank fails mid-run,
one whose rank is SIGKILLed, one whose launcher gets Ctrl-C.
Expectation: success writes result.json with a top1 and per-rank logs; every failure ends the
launcher non-zero within seconds, names the rank and host in the table, and leaves no process.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from helpers import (job_processes, kill_group, launch_argv, only_job_dir, run_launch, sigint_default, wait_for,
                           write_cluster)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def succeeded(succeeded_job):
    """The session's shared 2-rank job (tests/shared_jobs.py): 2 epochs, evaluated, default console."""
    return succeeded_job, succeeded_job.job


def test_two_rank_job_succeeds_with_result_and_logs(succeeded):
    proc, job = succeeded
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.load(open(os.path.join(job, "result.json")))
    assert result["status"] == "succeeded" and result["exit_code"] == 0 and result["failures"] == []
    assert 0.0 <= result["eval"]["top1"] <= 1.0
    # the terminal shows rank 0's lines with their [host:rank] prefix; every rank's are in the files
    assert re.search(r"^\[localhost:0\] epoch=2/2 step=4/4 ", proc.stdout, re.M)
    assert not re.search(r"^\[localhost:1\] ", proc.stdout, re.M)
    assert "[INFO]" not in proc.stdout  # MindSpore's chatter at exit stays in the files
    logs = os.path.join(job, "logs")
    assert re.search(r"^\[localhost:1\] epoch=2/2 step=4/4 ", open(os.path.join(logs, "all.log")).read(), re.M)
    assert sorted(os.listdir(logs)) == ["all.log", "rank_0.log", "rank_1.log", "scheduler.log"]
    rank1 = open(os.path.join(logs, "rank_1.log")).read()
    assert "global_step=8" in rank1 and "eval epoch" not in rank1
    digests = re.findall(r"^\[localhost:\d\] final rank=\d .*weights_sha256=(\w+)$",
                         open(os.path.join(logs, "all.log")).read(), re.M)
    assert len(digests) == 2 and digests[0] == digests[1]
    assert os.path.isfile(os.path.join(job, "cluster.yaml"))
    assert any(n.endswith(".ckpt") for n in os.listdir(os.path.join(job, "checkpoints")))
    assert job_processes(job) == []


def test_existing_job_dir_is_refused_untouched(succeeded, tmp_path):
    _, job = succeeded
    before = {n: os.path.getmtime(os.path.join(job, n)) for n in os.listdir(job)}
    cluster = os.path.join(job, "cluster.yaml")
    proc = run_launch(cluster, "--job-dir", job, cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert "job folder exists" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {n: os.path.getmtime(os.path.join(job, n)) for n in os.listdir(job)} == before


def test_failing_rank_stops_the_job_and_is_the_root_cause(failed_job):
    """The shared failing job (tests/shared_jobs.py): rank 1 exits 3 at step 5 of 40, on each of its 2 attempts."""
    proc, job = failed_job, failed_job.job
    assert proc.returncode == 1, proc.stderr
    # the table: root cause first, naming host, rank and exit code, with the rank's exception
    table = proc.stderr
    root = re.search(r"^\s+root cause\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s+(exit \d+|SIG\w+)", table, re.M)
    assert root, table
    assert root.groups() == ("localhost", "1", "1", "exit 3"), table
    assert "InjectedFault: debug_fail_step: rank 1 fails at step 5" in table
    result = json.load(open(os.path.join(job, "result.json")))
    assert result["status"] == "failed" and result["failures"][0]["rank"] == 1
    assert result["failures"][0]["exit_code"] == 3
    # rank 0 would have run 40 steps; it was stopped instead, within seconds of rank 1's exit
    assert "global_step=40" not in open(os.path.join(job, "logs", "rank_0.log")).read()
    first = result["attempts"][0]
    assert first["ended_at"] - first["started_at"] < 120
    assert job_processes(job) == []


def _spawn_launch(tmp_path, cifar_dir) -> tuple[subprocess.Popen, str]:
    """A 400-step 2-rank job, started: its launcher and the folder its job folder will be in. Its console
    goes to launch.out and launch.err there (a pipe nobody reads while another test runs would fill)."""
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, train={"steps_per_epoch": 400})
    with open(tmp_path / "launch.out", "w") as out, open(tmp_path / "launch.err", "w") as err:
        proc = subprocess.Popen(launch_argv(cluster), cwd=str(tmp_path), stdout=out, stderr=err, text=True,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=sigint_default)
    return proc, str(tmp_path / "runs")


def _training(proc: subprocess.Popen, runs: str) -> tuple[subprocess.Popen, str]:
    """Once the job's rank 1 trains: its launcher and job folder."""
    job = wait_for(lambda: os.path.isdir(runs) and os.listdir(runs) and only_job_dir(runs), 60, what="job dir")
    log = os.path.join(job, "logs", "rank_1.log")
    wait_for(lambda: os.path.exists(log) and "global_step=2 " in open(log).read(), 180, what="rank 1 training")
    return proc, job


def _rank_process(job: str, rank: int):
    for p in job_processes(job):
        env = p.environ()
        if env.get("MS_ROLE") == "MS_WORKER" and env.get("RANK_ID") == str(rank):
            return p
    return None


@pytest.fixture(scope="module")
def started(tmp_path_factory, cifar_dir):
    """Two such jobs started at once (each mostly waits while it starts): one for Ctrl-C, one for a
    SIGKILLed launcher; whatever a test left of them is killed at the end."""
    jobs = {name: _spawn_launch(tmp_path_factory.mktemp(name), cifar_dir) for name in ("ctrl_c", "sigkill")}
    yield jobs
    for proc, runs in jobs.values():
        kill_group(proc)
        for job in (os.listdir(runs) if os.path.isdir(runs) else []):
            for p in job_processes(os.path.join(runs, job)):
                p.kill()


# A SIGKILLed rank as the root cause: tests/test_supervisor.py (the logic) and test_slurm.py/test_fleet.py (the
# agents' real report across hosts); this module keeps what only a real local job shows.
def test_ctrl_c_stops_every_rank(started):
    proc, job = _training(*started["ctrl_c"])
    try:
        assert len(job_processes(job)) >= 3  # agent, scheduler, two ranks
        # bind_cores (the default): each rank pinned to its own share of this host's cores
        pinned = [set(_rank_process(job, r).cpu_affinity()) for r in (0, 1)]
        if len(os.sched_getaffinity(0)) >= 2:
            assert pinned[0] and pinned[1] and not pinned[0] & pinned[1], pinned
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, open(os.path.join(os.path.dirname(os.path.dirname(job)), "launch.err")).read()
    assert json.load(open(os.path.join(job, "result.json")))["status"] == "interrupted"
    assert job_processes(job) == []


def test_sigkilled_launcher_leaves_no_rank(started):
    """kill -9 of the launcher: each agent sees EOF on its stdin and stops its ranks."""
    proc, job = _training(*started["sigkill"])
    try:
        assert len(job_processes(job)) >= 3
        proc.send_signal(signal.SIGKILL)  # the launcher alone: no finally, no teardown of its own
        proc.wait(timeout=10)
        wait_for(lambda: job_processes(job) == [], 30, what="every process of the job to end")
    finally:
        kill_group(proc)
        for p in job_processes(job):
            p.kill()
