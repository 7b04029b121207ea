"""The names of everything in a job folder, in one place: the launcher writes them, the ranks and
``mscluster status`` / ``logs`` read them. Pure functions of the folder; imports nothing.

    <job>/cluster.yaml                 the cluster file as validated (defaults and --set applied)
    <job>/rank_table.json              ascend: the HCCL rank table
    <job>/train.attempt<k>.yaml        the built-in trainer's settings for attempt k
    <job>/status.json                  the live state (the launcher rewrites it)
    <job>/result.json                  how the job ended (written once, at the end)
    <job>/logs/rank_<N>.log            rank N's output, every attempt (a separator line between)
    <job>/logs/scheduler.log           the dynamic cluster's scheduler
    <job>/logs/all.log                 every process's lines as ``[host:rank] line``
    <job>/errors/<name>.attempt<k>.json  the error file of a process that died of an exception
    <job>/checkpoints/                 rank 0's checkpoints
    <job>/tensorboard/rank_<N>/        each rank's TensorBoard events
    <job>/compile_cache/               MindSpore's graph compile cache, shared by every attempt
    <job>/errors/stacks-attempt<k>/rank_<N>.txt   every rank's Python stack when attempt k stalled
"""
from __future__ import annotations

import os
import re
from typing import Optional

CLUSTER_FILE = "cluster.yaml"
RANK_TABLE_FILE = "rank_table.json"
STATUS_FILE = "status.json"
RESULT_FILE = "result.json"
LOGS_DIR = "logs"
ALL_LOG = "all.log"
ERRORS_DIR = "errors"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"

SCHEDULER = "scheduler"
_RANK_NAME = re.compile(r"rank(0|[1-9][0-9]{0,6})")
_SETTINGS_FILE = re.compile(r"train\.attempt(0|[1-9][0-9]{0,6})\.yaml")


def rank_name(rank: int) -> str:
    """The name of rank ``rank``'s process: ``rank<N>``."""
    return f"rank{rank}"


def rank_of(name: str) -> Optional[int]:
    """The rank a process name stands for; None for the scheduler or anything else."""
    match = _RANK_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def is_process_name(name: str) -> bool:
    """Whether ``name`` is one a launcher gives a process (``rank<N>`` or ``scheduler``)."""
    return name == SCHEDULER or rank_of(name) is not None


def log_name(name: str) -> str:
    """``rank3`` -> ``rank_3.log``; ``scheduler`` -> ``scheduler.log``; another name -> ``<name>.log``."""
    rank = rank_of(name)
    return f"rank_{rank}.log" if rank is not None else f"{name}.log"


def log_path(job_dir: str, name: str) -> str:
    return os.path.join(job_dir, LOGS_DIR, log_name(name))


def error_file(job_dir: str, name: str, attempt: int) -> str:
    return os.path.join(job_dir, ERRORS_DIR, f"{name}.attempt{attempt}.json")


def settings_file_name(attempt: int) -> str:
    return f"train.attempt{attempt}.yaml"


def settings_attempt(file_name: str) -> Optional[int]:
    """The attempt a ``train.attempt<k>.yaml`` file belongs to; None for any other name."""
    match = _SETTINGS_FILE.fullmatch(file_name)
    return int(match.group(1)) if match else None


def compile_cache_dir(job_dir: str, shape: str = "") -> str:
    """MindSpore's graph compile cache; ``shape`` names the job's shape (one folder each, see jobplan)."""
    return os.path.join(job_dir, "compile_cache", shape) if shape else os.path.join(job_dir, "compile_cache")


def faulthandler_file(job_dir: str, name: str, attempt: int) -> str:
    """Where a rank's ``faulthandler`` writes its stack on SIGUSR2 (the watchdog's fallback to py-spy)."""
    return os.path.join(job_dir, ERRORS_DIR, f"{name}.attempt{attempt}.stack")


def stacks_dir(job_dir: str, attempt: int) -> str:
    return os.path.join(job_dir, ERRORS_DIR, f"stacks-attempt{attempt}")


def stack_file_name(name: str) -> str:
    """``rank3`` -> ``rank_3.txt``; ``scheduler`` -> ``scheduler.txt``."""
    rank = rank_of(name)
    return f"rank_{rank}.txt" if rank is not None else f"{name}.txt"


def checkpoints_dir(job_dir: str) -> str:
    return os.path.join(job_dir, CHECKPOINTS_DIR)


def tensorboard_dir(job_dir: str, rank: int) -> str:
    return os.path.join(job_dir, TENSORBOARD_DIR, f"rank_{rank}")


# -- in-memory snapshots (train: snapshot_every_steps) --------------------------------------------
SNAPSHOT_DIR_ENV = "MSCLUSTER_SNAPSHOT_DIR"  # the host's snapshot folder, set by the launcher for every rank
SNAPSHOT_ROOT = "/dev/shm"  # tmpfs: memory that outlives a rank, and goes with a reboot
SNAPSHOT_PREFIX = "mscluster-"


def snapshot_dir(job_dir: str, host: str, root: str = SNAPSHOT_ROOT) -> str:
    """The job-owned tmpfs folder that keeps ``host``'s newest in-memory snapshot.

    ``mscluster-<job id>-<host>``: the job id is the job folder's name (letters, digits, ``._-``
    kept) and 12 hex of its absolute path's SHA-256, so two jobs never share a folder and the
    launcher, the agents and the ranks name it alike from what each already has.
    """
    import hashlib

    absolute = os.path.abspath(job_dir)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(absolute.rstrip("/")))[:64]
    digest = hashlib.sha256(absolute.encode()).hexdigest()[:12]
    safe_host = re.sub(r"[^A-Za-z0-9._-]", "_", host)[:64]
    return os.path.join(root, f"{SNAPSHOT_PREFIX}{name}-{digest}-{safe_host}")


def is_snapshot_dir(path: str) -> bool:
    """Whether ``path`` is a snapshot folder's name under the tmpfs root (nothing else is ever removed)."""
    return (os.path.dirname(path) == SNAPSHOT_ROOT and os.path.basename(path).startswith(SNAPSHOT_PREFIX)
            and ".." not in os.path.basename(path))
