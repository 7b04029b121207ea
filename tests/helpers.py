"""The tests' shared helpers: free ports, waiting, tiny settings, cluster files, launches, job processes.

One module, so that every test waits, picks ports and finds a job's processes the same way.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Iterator, Optional

import psutil
import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny ResNet that trains a step in well under a second on 2 cores.
TINY_TRAIN = {"arch": "resnet18", "stem": "cifar", "width": 8, "image_size": 32, "batch_size": 16,
              "epochs": 1, "steps_per_epoch": 4, "lr": 0.02, "log_every_steps": 1, "eval_every_epochs": 0,
              "tensorboard": False}


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``address`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


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


def launch_argv(cluster: str, *extra: str, console: Optional[str] = "all") -> list[str]:
    """``mscluster launch CLUSTER``; by default with every rank's lines on the console (tests read them)."""
    shown = ["--console", console] if console else []
    return [sys.executable, "-m", "mscluster_cli", "launch", cluster, *shown, *extra]


def run_launch(cluster: str, *extra: str, cwd: str, timeout: float = 300,
               console: Optional[str] = "all") -> subprocess.CompletedProcess:
    return subprocess.run(launch_argv(cluster, *extra, console=console), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def start_launch(cluster: str, *extra: str, cwd: str, console: Optional[str] = "all",
                 capture: bool = False) -> subprocess.Popen:
    """``mscluster launch`` in the background, in its own process group (``stop_launch`` ends it)."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(launch_argv(cluster, *extra, console=console), cwd=cwd, stdout=out, stderr=out,
                            text=True, start_new_session=True, preexec_fn=sigint_default)


def sigint_default() -> None:
    """A shell runs background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored:
    the launch that ``stop_launch`` interrupts must get Ctrl-C as a terminal's foreground job does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_launch(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Ctrl-C to a launch started by ``start_launch``, then make sure nothing of its group is left."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    finally:
        kill_group(proc)


def rank_step(job_dir: str, rank: int) -> int:
    """The global step rank ``rank`` last reported, from the job's status.json (0 before any)."""
    try:
        with open(os.path.join(job_dir, "status.json"), encoding="utf-8") as handle:
            return json.load(handle)["processes"][f"rank{rank}"].get("global_step") or 0
    except (OSError, ValueError, KeyError):
        return 0


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
    """The first truthy value of ``predicate()`` within ``timeout`` seconds; AssertionError after that."""
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


def all_log(job_dir: str) -> str:
    """Every process's lines of a job, as ``[host:rank] line`` (``logs/all.log``)."""
    with open(os.path.join(job_dir, "logs", "all.log"), encoding="utf-8") as handle:
        return handle.read()


def final_digests(job_dir: str, pattern: str = r"weights_sha256=(\w+)$") -> dict[str, str]:
    """``[host:rank]`` label -> the weight digest that rank printed last (from ``logs/all.log``)."""
    found = {}
    for match in re.finditer(r"^\[([^\]]+)\] .*?" + pattern, all_log(job_dir), re.M):
        found[match.group(1)] = match.group(2)
    return found


USER_FILE = 'raise SystemExit("user file imported")\n'


def user_folder(path: str, names: tuple[str, ...] = ("launcher.py", "trainer.py", "mscluster.py")) -> str:
    """A training project's folder holding files named as mscluster's packages, each failing at import."""
    os.makedirs(path, exist_ok=True)
    for name in names:
        with open(os.path.join(path, name), "w", encoding="utf-8") as handle:
            handle.write(USER_FILE)
    return str(path)


@contextlib.contextmanager
def side_by_side(jobs: dict[str, Callable[[], Any]],
                 at_once: int = 2) -> Iterator[dict[str, concurrent.futures.Future]]:
    """Independent real jobs, started in the order given with ``at_once`` running at a time: name -> its future.

    A 2-rank job spends much of its time waiting (its MindSpore cluster forming, a restart's back-off,
    the launcher's stop of a leftover scheduler), so two at once on 2 cores end well before one after
    the other. Leaving waits for every job (each has its own timeout); a job's exception is its result's.
    """
    with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
        yield {name: pool.submit(job) for name, job in jobs.items()}
