"""``mscluster submit``: a job folder with its batch script, handed to ``sbatch``.

``<job>/sbatch.sh`` asks Slurm for the ``slurm:`` section's nodes (one task each), time, partition
and account, and a warning signal before the time limit; it runs ``mscluster launch`` of the
job's own ``cluster.yaml`` with ``--from-sbatch`` inside the allocation. ``<job>/slurm.json``
keeps the Slurm job id for ``status`` and ``cancel``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Mapping, Optional

from launcher.config import load_cluster, resolved_yaml
from launcher.errors import JobDirError
from launcher.hosts import scheduler_for
from launcher.jobplan import CLI_MODULE, own_argv
from launcher.launch import create_job_dir, default_job_dir
from launcher.slurm.allocation import SlurmError, require_tool
from launcher.slurm.batch import SBATCH_SCRIPT, SLURM_JOB_FILE, job_state, parse_sbatch_id, read_job_id, sbatch_script
from mscluster import jobfiles
from mscluster.fsutil import write_atomic, write_json_atomic

SBATCH_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SubmitRequest:
    cluster_path: str
    set_pairs: tuple[str, ...] = ()
    job_dir: Optional[str] = None
    sbatch_args: tuple[str, ...] = ()  # after ``--``: given to sbatch as they are, after the script's own


@dataclass(frozen=True)
class Submitted:
    job_id: str
    job_dir: str
    script: str


def launch_argv(python: str, job_dir: str) -> list[str]:
    """What the batch script runs inside the allocation."""
    return [*own_argv(python, CLI_MODULE, "launch", os.path.join(job_dir, jobfiles.CLUSTER_FILE),
                      "--job-dir", job_dir, "--from-sbatch")]


def submit(request: SubmitRequest, environ: Mapping[str, str] = os.environ, python: str = sys.executable) -> Submitted:
    """Write the job folder and its sbatch.sh, submit it, and record the Slurm job id.

    Raises:
        ConfigError: the cluster file is bad. SlurmError: not scheduler: slurm, no sbatch, or sbatch
            refused the job (the folder it would have used is then removed: it held only what this wrote).
        JobDirError: the job folder exists.
    """
    cluster = load_cluster(request.cluster_path, request.set_pairs)
    if not scheduler_for(cluster).submits:
        raise SlurmError(f"{cluster.source}: scheduler: submit hands jobs to Slurm: set scheduler: slurm "
                               f"(this file says {cluster.scheduler}; run it with mscluster launch)")
    sbatch = require_tool("sbatch", environ)
    launch_dir = os.getcwd()
    job_dir = os.path.abspath(request.job_dir or default_job_dir(cluster, time.time()))
    create_job_dir(job_dir, resume=False)
    try:
        write_atomic(os.path.join(job_dir, jobfiles.CLUSTER_FILE), resolved_yaml(cluster), mode=0o600)
        script = os.path.join(job_dir, SBATCH_SCRIPT)
        write_atomic(script, sbatch_script(cluster, job_dir, launch_argv(python, job_dir), launch_dir),
                     mode=0o700)
        argv = [sbatch, "--parsable", *request.sbatch_args, script]
        try:
            done = subprocess.run(argv, env=dict(environ), capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S,
                                  cwd=launch_dir)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"sbatch did not answer within {SBATCH_TIMEOUT_S:g} s (is slurmctld up?)") from None
        job_id = parse_sbatch_id(done.stdout) if done.returncode == 0 else None
        if job_id is None:
            said = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[-1]
            raise SlurmError(f"sbatch refused the job: {said}")
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)  # made by this call a moment ago; nothing of the user's
        raise
    write_json_atomic(os.path.join(job_dir, SLURM_JOB_FILE),
                      {"job_id": job_id, "submitted_at": time.time(), "sbatch": argv}, mode=0o600)
    return Submitted(job_id=job_id, job_dir=job_dir, script=script)


def cancel(job_dir: str, environ: Mapping[str, str] = os.environ) -> str:
    """``scancel`` the Slurm job of a submitted job folder; returns its id.

    Raises:
        JobDirError: not a folder of mscluster submit. SlurmError: scancel missing or refusing.
    """
    if not os.path.isdir(job_dir):
        raise JobDirError(f"{job_dir}: no such job folder")
    job_id = read_job_id(job_dir)
    if job_id is None:
        raise JobDirError(f"{job_dir}: not a job of mscluster submit (no {SLURM_JOB_FILE}); stop a "
                          "launch with Ctrl-C or kill -TERM of its launcher")
    scancel = require_tool("scancel", environ)
    done = subprocess.run([scancel, job_id], env=dict(environ), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        said = (done.stderr.strip() or f"exit code {done.returncode}").splitlines()[-1]
        raise SlurmError(f"scancel {job_id}: {said}")
    return job_id


def requeue(job_id: str, environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """``scontrol requeue`` of this batch job (it ends this run; Slurm starts the script again later).
    Returns why it failed, or None."""
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], env=dict(environ), capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit code {done.returncode}").splitlines()[-1]


def slurm_lines(job_dir: str, environ: Mapping[str, str] = os.environ) -> Optional[dict[str, str]]:
    """The Slurm side of a submitted job, for ``status``: {"job_id", "state", "reason"}; None if not submitted."""
    job_id = read_job_id(job_dir)
    if job_id is None:
        return None
    state, reason = job_state(job_id, environ)
    return {"job_id": job_id, "state": state, "reason": reason}
