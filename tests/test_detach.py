"""Feature: jobs that outlive the terminal: ``launch --detach``, ``stop``, ``jobs``, ``logs -f``.

Description: a tiny ``command:`` program (a bounded loop that reports a step every 0.1 s through
``mscluster.rank``, no MindSpore, no trainer) runs on 2 local ranks, launched with ``--detach``;
the job is listed, followed, sent SIGHUP, and stopped with ``mscluster stop``, also when its
launcher does not answer TERM (it is SIGSTOPped, so stop must KILL it). ``stop`` is refused for a
launcher on another host and for a pid that is not the job's launcher. Cost: ~25 s on 2 cores.
Expectation: ``--detach`` returns once every rank runs, the launcher lives in its own session
with its output in ``<job>/launcher.log``; a pre-flight error is the same one line and exit code
with and without ``--detach``; after ``stop`` no process of the job is left; one line for each
refusal.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from helpers import job_processes, rank_step, wait_for

pytestmark = pytest.mark.integration

LOOP = ("import time, mscluster.rank as r\n"
        "for s in range(1, 600):\n"  # bounded: a test that loses its job leaves nothing running past a minute
        "    r.report(s)\n"
        "    print('at step', s, flush=True)\n"
        "    time.sleep(0.1)\n")


def _cluster(path, **fields) -> str:
    data = {"name": "d", "backend": "cpu", "workdir": os.path.join(os.path.dirname(str(path)), "runs"),
            "hosts": [{"address": "localhost", "devices": 2}], "command": ["python", "-c", LOOP], **fields}
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return str(path)


def _cli(*args: str, cwd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscluster_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)  # a terminal's session of its own


def _launcher(job: str) -> psutil.Process:
    with open(os.path.join(job, "status.json"), encoding="utf-8") as handle:
        return psutil.Process(json.load(handle)["launcher"]["pid"])


def _detach(tmp_path, *extra: str) -> str:
    proc = _cli("launch", _cluster(tmp_path / "c.yaml"), "--detach", *extra, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = re.search(r"mscluster: job (\S+): every rank started", proc.stdout).group(1)
    assert f"mscluster stop {job}" in proc.stdout and f"mscluster logs -f {job}" in proc.stdout
    return job


def test_detached_job_runs_on_is_listed_followed_and_stopped_with_nothing_left(tmp_path):
    job = _detach(tmp_path)
    with open(os.path.join(job, "status.json"), encoding="utf-8") as handle:
        states = {n: p["state"] for n, p in json.load(handle)["processes"].items()}
    assert set(states.values()) <= {"running", "succeeded"} and "rank1" in states  # returned once all started
    launcher = _launcher(job)
    assert os.getsid(launcher.pid) == launcher.pid  # its own session: no terminal's SIGHUP reaches it
    assert launcher.cmdline()[-1] != "--detach" and "--detached-launcher" in launcher.cmdline()

    follower = subprocess.Popen([sys.executable, "-m", "mscluster_cli", "logs", "-f", job], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        listed = _cli("jobs", str(tmp_path / "runs"), cwd=str(tmp_path))
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if os.path.basename(job) in line).split()
        assert row[1:3] == ["running", "2"] and row[-1] == f"{launcher.pid}@{socket.gethostname()}", listed.stdout

        launcher.send_signal(signal.SIGHUP)  # a stray hang-up is not a stop
        step = rank_step(job, 0)
        wait_for(lambda: rank_step(job, 0) >= step + 5, 30, what="the job going on after SIGHUP")

        stopped = _cli("stop", job, cwd=str(tmp_path))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"job {job} stopped" in stopped.stdout
        out, _ = follower.communicate(timeout=30)  # logs -f ends with the job
    finally:
        follower.kill()
    assert follower.returncode == 0 and "[localhost:1] at step 3" in out  # then it ended
    assert not launcher.is_running() or launcher.status() == psutil.STATUS_ZOMBIE
    wait_for(lambda: not job_processes(job), 15, what="every process of the job gone")
    status = _cli("status", job, "--json", cwd=str(tmp_path))
    assert json.loads(status.stdout)["state"] == "interrupted"
    with open(os.path.join(job, "launcher.log"), encoding="utf-8") as handle:
        assert "SIGTERM" in handle.read()  # the launcher's own account of its end is in the job folder
    again = _cli("stop", job, cwd=str(tmp_path))
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"mscluster stop: error: {job}: the job is not running (interrupted); nothing to stop"]
    listed = _cli("jobs", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert "interrupted" in listed.stdout


def test_stop_kills_a_launcher_that_does_not_answer_and_its_agents_stop_the_ranks(tmp_path):
    job = _detach(tmp_path)
    launcher = _launcher(job)
    ranks = [p for p in job_processes(job)]
    assert len(ranks) >= 3  # the agent, the scheduler, 2 ranks
    launcher.send_signal(signal.SIGSTOP)  # a hung launcher: TERM stays pending
    try:
        stopped = _cli("stop", job, "--grace-period", "0", cwd=str(tmp_path))
    finally:
        if launcher.is_running():
            launcher.send_signal(signal.SIGCONT)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "sent SIGKILL" in stopped.stdout and f"job {job} killed" in stopped.stdout
    wait_for(lambda: not job_processes(job), 30, what="the agents stopping their ranks after the launcher's KILL")


def test_a_preflight_error_is_the_same_line_and_exit_code_with_detach(tmp_path):
    cluster = _cluster(tmp_path / "c.yaml", python="/nonexistent/python")
    plain = _cli("launch", cluster, cwd=str(tmp_path))
    detached = _cli("launch", cluster, "--detach", cwd=str(tmp_path))
    assert plain.returncode == detached.returncode == 3
    assert detached.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]
    assert "python interpreter /nonexistent/python not found" in plain.stderr
    assert not os.path.exists(tmp_path / "runs")  # nothing started, no job folder


def _fake_job(tmp_path, launcher: dict) -> str:
    job = tmp_path / "job"
    job.mkdir()
    (job / "status.json").write_text(json.dumps({"version": 2, "launcher": launcher, "attempt": 0, "state": "running",
                                                 "processes": {}}))
    return str(job)


def test_stop_refuses_a_launcher_on_another_host_in_one_line(tmp_path):
    job = _fake_job(tmp_path, {"pid": 4242, "host": "elsewhere", "started_at": time.time()})
    proc = _cli("stop", job, cwd=str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"mscluster stop: error: {job}: its launcher (pid 4242) runs on elsewhere, not here ({socket.gethostname()}); "
        "run mscluster stop there"]


def test_stop_never_signals_a_pid_that_is_not_the_jobs_launcher(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        job = _fake_job(tmp_path, {"pid": bystander.pid, "host": socket.gethostname(), "started_at": time.time()})
        proc = _cli("stop", job, cwd=str(tmp_path))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"mscluster stop: error: {job}: its launcher (pid {bystander.pid}) is gone; nothing to stop"]
        assert bystander.poll() is None  # alive: never signalled
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.ssh
def test_stop_leaves_nothing_on_either_namespace_host(netns_hosts, tmp_path):
    lab = netns_hosts
    spec = lab.ssh_spec()
    hosts = [{"address": h.address, "devices": 2} for h in lab.hosts[:2]]
    cluster = _cluster(tmp_path / "c.yaml", hosts=hosts, python=sys.executable,
                       ssh={"user": spec.user, "port": spec.port, "key_file": spec.key_file, "connect_timeout": 5,
                            "known_hosts": spec.known_hosts})
    proc = _cli("launch", cluster, "--detach", cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = re.search(r"mscluster: job (\S+): every rank started", proc.stdout).group(1)
    wait_for(lambda: all(rank_step(job, r) >= 3 for r in range(4)), 60, what="every rank stepping on both hosts")
    running = job_processes(job)
    assert len(running) >= 5, [p.cmdline() for p in running]  # 2 ranks per host and the scheduler
    stopped = _cli("stop", job, cwd=str(tmp_path))
    assert stopped.returncode == 0 and f"job {job} stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    wait_for(lambda: not job_processes(job), 30, what="nothing of the job left on either host")
    with open(os.path.join(job, "status.json"), encoding="utf-8") as handle:
        hosts_seen = {p["host"] for p in json.load(handle)["processes"].values()}
    assert hosts_seen == {h["address"] for h in hosts}
