"""``mscluster submit``'s Slurm side: the batch script, the job id sbatch gives, the job's state in Slurm."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from typing import Mapping, Optional, Sequence

from launcher.spec import ClusterSpec

SLURM_JOB_FILE = "slurm.json"  # <job>/slurm.json: the Slurm job id submit got
SBATCH_SCRIPT = "sbatch.sh"


def parse_show_job(text: str) -> dict[str, str]:
    """``scontrol -o show job ID`` -> its fields (JobState, Reason, NodeList, RunTime, ...)."""
    fields: dict[str, str] = {}
    for word in text.split():
        if "=" in word:
            key, value = word.split("=", 1)
            fields.setdefault(key, value)
    return fields


def sbatch_script(cluster: ClusterSpec, job_dir: str, launch_argv: Sequence[str], launch_dir: str) -> str:
    """The batch script ``mscluster submit`` writes to ``<job>/sbatch.sh``: Slurm's options from the
    ``slurm:`` section, then ``mscluster launch`` of the job folder, exec'd: the batch shell becomes the
    launcher, so Slurm's warning signal (``--signal=B:USR1@s``) and scancel's TERM reach it directly.

    With ``slurm.spares`` it asks for that many nodes more, and ``--no-kill``: a node that fails must not end
    the allocation, so a spare can take its place."""
    s = cluster.slurm
    nodes = (s.nodes or 1) + s.spares
    options = [f"--job-name={cluster.name}", f"--nodes={nodes}", "--ntasks-per-node=1",
               f"--output={os.path.join(job_dir, 'logs', 'slurm-%j.out')}", "--open-mode=append",
               f"--chdir={launch_dir}", f"--signal=B:USR1@{s.warning_s}", "--requeue" if s.requeue else "--no-requeue"]
    if s.exclusive:
        options.append("--exclusive")
    if s.spares:
        options.append("--no-kill")
    for key in ("partition", "account", "time"):
        value = getattr(s, key)
        if value is not None:
            options.append(f"--{key}={value}")
    options += list(s.sbatch_options)
    lines = ["#!/bin/bash",
             f"# Written by `mscluster submit` for job {cluster.name}: Slurm runs it on the first node of the",
             "# allocation; it runs `mscluster launch` there, which starts one agent per node with srun.",
             *(f"#SBATCH {shlex.quote(o)}" for o in options),
             "set -eu",
             'echo "mscluster: Slurm job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}"',
             "exec " + shlex.join(launch_argv), ""]
    return "\n".join(lines)


def parse_sbatch_id(stdout: str) -> Optional[str]:
    """``sbatch --parsable`` prints ``<id>`` or ``<id>;<cluster>``."""
    text = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = text.split(";", 1)[0]
    return job_id if job_id.isdigit() else None


def read_job_id(job_dir: str) -> Optional[str]:
    """The Slurm job id ``submit`` recorded in the job folder, or None."""
    try:
        with open(os.path.join(job_dir, SLURM_JOB_FILE), encoding="utf-8") as handle:
            value = json.load(handle).get("job_id")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value is not None and str(value).isdigit() else None


def job_state(job_id: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """(state, reason) of a Slurm job: from squeue while Slurm lists it, else ``scontrol show job``;
    ("UNKNOWN", why) when Slurm no longer knows it or does not answer."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], env=dict(environ), capture_output=True, text=True,
                  timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            state, _, reason = out.stdout.strip().splitlines()[0].partition("|")
            return state, "" if reason in ("None", "(null)") else reason
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=dict(environ), capture_output=True, text=True,
                  timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "UNKNOWN", f"Slurm did not answer ({exc})"
    if out.returncode != 0:
        return "UNKNOWN", (out.stderr.strip().splitlines() or ["Slurm no longer knows the job"])[-1]
    fields = parse_show_job(out.stdout)
    reason = fields.get("Reason", "")
    return fields.get("JobState", "UNKNOWN"), "" if reason in ("None", "(null)") else reason
