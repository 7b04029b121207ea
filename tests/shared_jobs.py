"""Small real jobs that several test modules assert on: each is launched once per session.

A 2-rank launch costs ~15 s to form its MindSpore cluster and tear it down whatever it trains, so
the tests that only read what a finished job left (its result, logs, status, TensorBoard files, job
folder) share one launch of each kind instead of each launching its own; the two are launched side by
side when a test first needs either. The jobs are read-only
for the tests: a test that changes a job folder copies it first (``copy_job``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import pytest

from helpers import kill_group, launch_argv, side_by_side, user_folder, write_cluster

# SYSTEM_METRICS_INTERVAL_S: host metrics often enough to land within 8 steps; API_TOKEN: a secret in the
# saved cluster.yaml (why the job folder's modes matter)
SHARED_ENV = {"MS_TOPO_TIMEOUT": "60", "SYSTEM_METRICS_INTERVAL_S": "0.3", "API_TOKEN": "s3cret"}


@dataclass
class FinishedJob:
    work: str  # the folder the launch ran in (it holds the cluster file)
    cluster: str
    job: str
    returncode: int
    stdout: str
    stderr: str
    seen: list = field(default_factory=list)  # (state, rank 0's global step) read from status.json while it ran
    cli_running: Optional[subprocess.CompletedProcess] = None  # `mscluster status` once rank 0 had a step

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _cli_status(job: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscluster_cli", "status", job], capture_output=True, text=True,
                          timeout=60)


def _launch_polled(work, cluster: str, job: str, console: Optional[str], timeout: float = 400,
                   project: Optional[str] = None) -> FinishedJob:
    """``mscluster launch CLUSTER --job-dir JOB``, reading its status.json (and ``status`` once) while it runs.

    ``project``: launched from that folder with the ``mscluster`` command, as a user does (``python -m``
    would import the folder's own launcher.py)."""
    from launcher.status import read_status

    out, err = open(os.path.join(work, "launch.out"), "w+"), open(os.path.join(work, "launch.err"), "w+")
    argv = launch_argv(cluster, "--job-dir", job, console=console)
    if project is not None:
        # `mscluster launch ...` (this venv's command) in place of `python -m mscluster_cli launch ...`
        argv = [os.path.join(os.path.dirname(sys.executable), "mscluster"), *argv[argv.index("launch"):]]
    proc = subprocess.Popen(argv, cwd=project or str(work), stdout=out,
                            stderr=err, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen, cli_running = [], None
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                status = read_status(job)
            except Exception:  # noqa: BLE001 - the folder is being created
                time.sleep(0.1)
                continue
            lead = status.lead
            seen.append((status.state, lead.global_step if lead else None))
            if cli_running is None and status.state == "running" and lead and lead.global_step:
                cli_running = _cli_status(job)
            time.sleep(0.1)
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            kill_group(proc)
            proc.wait()
    out.seek(0)
    err.seek(0)
    done = FinishedJob(str(work), cluster, job, proc.returncode, out.read(), err.read(), seen, cli_running)
    out.close()
    err.close()
    return done


@pytest.fixture(scope="session")
def _shared_launches(tmp_path_factory, cifar_dir):
    """Both jobs below, started side by side (tests.helpers.side_by_side) when a test first needs either:
    each mostly waits on its cluster, so the pair ends soon after the longer one."""
    succeeded, failed = tmp_path_factory.mktemp("succeeded"), tmp_path_factory.mktemp("failed")
    with side_by_side({"succeeded": lambda: _succeeded(succeeded, cifar_dir),
                       "failed": lambda: _failed(failed, cifar_dir)}) as futures:
        yield futures


@pytest.fixture(scope="session")
def succeeded_job(_shared_launches) -> FinishedJob:
    """A 2-rank local job of the built-in trainer that succeeds: 2 epochs x 4 steps, evaluated after each
    (on the test split's first 256 images),
    TensorBoard on, the default console (rank 0 and warnings), polled with ``status`` while it runs;
    launched with the ``mscluster`` command from a training project's folder whose own launcher.py,
    trainer.py and mscluster.py fail at import (tests.helpers.user_folder): every process runs there.

    Shared by test_launch_local (result, logs, console), test_job_folder (modes), test_monitoring
    (TensorBoard, status, logs, tensorboard command) and test_own_modules (none of mscluster's processes
    imports the folder's files). Read-only: ``copy_job`` before changing it.
    """
    return _shared_launches["succeeded"].result()


def _succeeded(work, cifar_dir) -> FinishedJob:
    cluster = write_cluster(str(work / "c.yaml"), cifar_dir, env=SHARED_ENV,
                            train={"epochs": 2, "steps_per_epoch": 4, "eval_every_epochs": 1, "eval_images": 256,
                                   "tensorboard": True})
    return _launch_polled(work, cluster, str(work / "job"), console=None, project=user_folder(str(work / "project")))


# the rank that fails, at which step, and the exception it raises (trainer/faults.py)
FAIL_RANK, FAIL_STEP = 1, 5
FAIL_STEPS_PER_EPOCH = 40  # rank 0 would run 40 steps; it is stopped at step 5 instead


@pytest.fixture(scope="session")
def failed_job(_shared_launches) -> FinishedJob:
    """A 2-rank local job whose rank 1 exits 3 at step 5 on every attempt; ``restarts: 1`` (so 2 attempts,
    the second resumed from the step-4 checkpoint); TensorBoard on; every rank's lines on the console.

    Shared by test_launch_local (a failing rank stops the job and is the root cause), test_resume (restarts
    exhausted) and test_monitoring (TensorBoard across the restart, status of a failed job). Read-only.
    """
    return _shared_launches["failed"].result()


def _failed(work, cifar_dir) -> FinishedJob:
    cluster = write_cluster(str(work / "c.yaml"), cifar_dir, env=SHARED_ENV, restarts=1,
                            train={"steps_per_epoch": FAIL_STEPS_PER_EPOCH, "save_every_steps": 2,
                                   "debug_fail_rank": FAIL_RANK, "debug_fail_step": FAIL_STEP, "tensorboard": True})
    job = str(work / "job")
    proc = subprocess.run(launch_argv(cluster, "--job-dir", job), cwd=str(work), capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return FinishedJob(str(work), cluster, job, proc.returncode, proc.stdout, proc.stderr)


def copy_job(job: str, dest: str) -> str:
    """A copy of a shared job folder (modes kept) that a test may change; its path."""
    shutil.copytree(job, dest, symlinks=True)
    return dest


def result_of(job: str) -> dict:
    with open(os.path.join(job, "result.json"), encoding="utf-8") as handle:
        return json.load(handle)
