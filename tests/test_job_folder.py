"""Feature: the job folder is private and has one owner.

Description: real launches of the built-in trainer on 2 local ranks: a finished job's folders and
files; a second launcher started on the folder of a running job; a job continued in its folder
after symlinks to a file outside were planted at the names of its temporary and log files.
Expectation: folders 0700 and the launcher's files 0600; the second launcher is refused in one
line naming the first one's pid and host, and changes nothing; no planted link is followed.
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import job_processes, run_launch, start_launch, stop_launch, wait_for, write_cluster
from shared_jobs import copy_job

pytestmark = pytest.mark.integration


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(scope="module")
def finished(succeeded_job):
    """The session's shared 2-rank job (tests/shared_jobs.py), finished in its --job-dir; read-only."""
    assert succeeded_job.returncode == 0, succeeded_job.output[-4000:]
    return Path(succeeded_job.work), succeeded_job.cluster, succeeded_job.job


def test_a_finished_jobs_folders_are_0700_and_its_files_0600(finished):
    _, _, job = finished
    for folder in ("", "logs", "errors", "checkpoints"):
        assert _mode(os.path.join(job, folder)) == 0o700, folder
    for name in ("cluster.yaml", "status.json", "result.json", "train.attempt0.yaml", "launcher.lock",
                 "logs/all.log", "logs/rank_0.log", "logs/rank_1.log", "logs/scheduler.log"):
        assert _mode(os.path.join(job, name)) == 0o600, name
    assert "s3cret" in open(os.path.join(job, "cluster.yaml")).read()  # why the modes matter


def test_planted_links_at_temporary_and_log_names_are_not_followed(finished, tmp_path):
    _, cluster, shared = finished
    job = copy_job(shared, str(tmp_path / "job"))  # the shared job stays as it ended
    victim = tmp_path / "victim.txt"
    victim.write_text("must stay as it is\n")
    planted = [os.path.join(job, n) for n in ("status.json.tmp", "result.json.tmp", ".cluster.yaml.tmp",
                                               "logs/rank_0.log.tmp", "logs/all.log")]
    os.replace(os.path.join(job, "logs", "all.log"), os.path.join(job, "logs", "all.log.kept"))
    for path in planted:
        os.symlink(victim, path)
    proc = run_launch(cluster, "--job-dir", job, "--set", "train.resume=auto", "--set", "train.epochs=3",
                      "--set", "train.eval_every_epochs=0", cwd=str(tmp_path))  # the third epoch, without an evaluation
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert victim.read_text() == "must stay as it is\n"
    assert not os.path.islink(os.path.join(job, "logs", "all.log"))  # the planted log link was replaced
    assert "epoch=3/3" in open(os.path.join(job, "logs", "all.log")).read()


def test_a_second_launcher_on_a_running_job_is_refused(tmp_path, cifar_dir):
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, train={"steps_per_epoch": 400})
    job = str(tmp_path / "job")
    first = start_launch(cluster, "--job-dir", job, cwd=str(tmp_path))
    try:
        # status.json comes from the launcher, train.attempt0.yaml a moment later from the agent: wait for both
        wait_for(lambda: all(os.path.exists(os.path.join(job, n)) for n in ("status.json", "train.attempt0.yaml")),
                 90, what="the first job's status and settings")
        before = {n: os.path.getmtime(os.path.join(job, n)) for n in ("cluster.yaml", "train.attempt0.yaml")}
        second = subprocess.run([sys.executable, "-m", "mscluster_cli", "launch", cluster, "--job-dir", job,
                                 "--set", "train.resume=auto"], cwd=str(tmp_path), capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.strip().splitlines() == [
            f"mscluster launch: error: {job}: another launcher runs this job (pid {first.pid} on "
            f"{socket.gethostname()}); stop it first, or choose another --job-dir"]
        assert before == {n: os.path.getmtime(os.path.join(job, n)) for n in before}
        assert first.poll() is None  # the running job goes on
    finally:
        stop_launch(first)
    assert job_processes(job) == []
