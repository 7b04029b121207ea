"""Helpers for tests that run ``mscluster launch`` as a real process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

import psutil
import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny ResNet that trains a step in well under a second on 2 cores.
TINY_TRAIN = {"arch": "resnet18", "stem": "cifar", "width": 8, "image_size": 32, "batch_size": 16,
              "epochs": 1, "steps_per_epoch": 4, "lr": 0.02, "log_every_steps": 1, "eval_every_epochs": 0,
              "tensorboard": False}


def write_cluster(path: str, data_dir: str, hosts: Optional[list] = None, train: Optional[dict] = None,
                  **fields: Any) -> str:
    cluster = {"name": "t", "backend": "cpu", "workdir": os.path.join(os.path.dirname(path), "runs"),
               "hosts": hosts or [{"address": "localhost", "devices": 2}],
               "env": {"MS_TOPO_TIMEOUT": "60"},
               "train": {**TINY_TRAIN, "data_dir": data_dir, **(train or {})}}
    cluster.update(fields)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(cluster, handle)
    return path


def launch_argv(cluster: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mscluster.cli", "launch", cluster, *extra]


def run_launch(cluster: str, *extra: str, cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(launch_argv(cluster, *extra), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def job_processes(job_dir: str) -> list[psutil.Process]:
    """Live processes (agents, ranks, scheduler) whose environment names this job folder."""
    job_dir = os.path.abspath(job_dir)
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("MSCLUSTER_JOB_DIR") == job_dir:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def only_job_dir(runs: str) -> str:
    entries = [os.path.join(runs, e) for e in os.listdir(runs)]
    assert len(entries) == 1, entries
    return entries[0]


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
