"""Feature: one lifecycle for a job's processes, its attempts and the job itself.

Description: a real local job whose ``command:`` never joins MindSpore's dynamic cluster
(``python -c 'print(1)'`` on backend cpu, where the launcher starts the scheduler anyway).
Expectation: the job ends ``succeeded`` within seconds of its ranks; the scheduler is stopped, not
counted as a failure; ``status.json``, ``result.json`` and ``mscluster status`` agree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from helpers import job_processes, launch_argv, only_job_dir
from launcher.lifecycle import AttemptState, Interrupted, JobState, ProcessState, interrupt_reason, job_state_of



def test_the_words_users_see_are_unchanged():
    # status.json, result.json and `mscluster status --json` keep the words they always had
    assert [s.value for s in ProcessState] == ["pending", "running", "succeeded", "failed", "stopped", "lost"]
    assert [s.value for s in JobState] == ["running", "succeeded", "failed", "interrupted", "preempted"]
    assert json.dumps({"state": AttemptState.SUCCEEDED, "job": JobState.PREEMPTED}) == \
        '{"state": "succeeded", "job": "preempted"}'
    assert f"{JobState.FAILED}" == "failed" and str(ProcessState.LOST) == "lost"


def test_an_attempt_end_is_the_job_end_of_the_same_name():
    for state in AttemptState:
        job = job_state_of(state)
        assert job is (JobState(state.value) if state.ended else JobState.RUNNING)


def test_an_interrupt_names_its_signal():
    import signal

    err = Interrupted(signal.SIGTERM)
    assert isinstance(err, KeyboardInterrupt) and err.signum == signal.SIGTERM and err.name == "SIGTERM"
    assert interrupt_reason(err.name) == "interrupted (SIGTERM)"
    assert interrupt_reason("SIGINT") == interrupt_reason(None) == "interrupted (Ctrl-C)"


@pytest.mark.integration

def test_a_program_that_never_joins_the_cluster_ends_succeeded(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump({
        "name": "noinit", "backend": "cpu", "workdir": str(tmp_path / "runs"),
        "hosts": [{"address": "localhost", "devices": 2}], "command": ["python", "-c", "print(1)"]}))
    began = time.monotonic()
    proc = subprocess.run(launch_argv(str(cluster), console=None), cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=120)
    took = time.monotonic() - began
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "job succeeded" in proc.stdout
    assert took < 30, f"the job took {took:.0f} s: the scheduler was left waiting"
    job = only_job_dir(str(tmp_path / "runs"))
    status = json.load(open(os.path.join(job, "status.json")))
    result = json.load(open(os.path.join(job, "result.json")))
    assert status["state"] == result["status"] == "succeeded"
    assert result["failures"] == [] and result["attempts"][-1]["ok"] is True
    assert status["processes"]["scheduler"]["state"] == "stopped"
    assert {status["processes"][r]["state"] for r in ("rank0", "rank1")} == {"succeeded"}
    logs = os.path.join(job, "logs")  # why its lines stop is said in its own log, not in an agent.log
    assert "agent.log" not in os.listdir(logs)
    with open(os.path.join(logs, "scheduler.log"), encoding="utf-8") as handle:
        assert "mscluster: every rank has ended well: stopping scheduler (no worker left to serve)" in handle.read()
    shown = subprocess.run([sys.executable, "-m", "mscluster_cli", "status", job], capture_output=True, text=True,
                           timeout=60)
    assert "state:     succeeded" in shown.stdout, shown.stdout + shown.stderr
    assert job_processes(job) == []
