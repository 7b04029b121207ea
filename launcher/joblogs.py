"""Reading a job's logs: one rank's file, or every process merged by time, optionally followed.

The launcher keeps ``<job>/logs/rank_<N>.log`` (that rank's lines as printed) and ``logs/all.log``
(every process's lines as ``[host:rank] line``, in the order the launcher received them: one
clock for all hosts, so the merge needs no timestamps and no clock agreement between hosts).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterator, Optional

from launcher.errors import JobDirError

ALL_LOG = "all.log"


def log_path(job_dir: str, rank: Optional[int] = None) -> str:
    """The file ``mscluster logs`` reads: ``logs/all.log``, or ``logs/rank_<rank>.log``.

    Raises:
        JobDirError: the job folder or its logs/ folder is missing.
    """
    if not os.path.isdir(job_dir):
        raise JobDirError(f"{job_dir}: no such job folder")
    logs = os.path.join(job_dir, "logs")
    if not os.path.isdir(logs):
        raise JobDirError(f"{job_dir}: no logs/ folder here; give the folder `mscluster launch` printed")
    return os.path.join(logs, ALL_LOG if rank is None else f"rank_{rank}.log")


def missing_log_message(job_dir: str, path: str) -> str:
    """One line for a log that is not there: which ranks do have logs."""
    logs = os.path.dirname(path)
    ranks = sorted(int(n[5:-4]) for n in os.listdir(logs)
                   if n.startswith("rank_") and n.endswith(".log") and n[5:-4].isdigit())
    have = f"logs exist for rank(s) {', '.join(map(str, ranks))}" if ranks else "no rank has written a line yet"
    return f"{path}: no such log ({have})"


def read_lines(path: str) -> Iterator[str]:
    """Every complete line of ``path`` (without its newline)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            yield line.rstrip("\n")


def follow(path: str, done: Callable[[], bool], poll_s: float = 0.25,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """The lines of ``path`` from its start, then each new one as it is written, until ``done()``.

    A file that does not exist yet is waited for. Only whole lines are yielded (a line being
    written is held back until its newline arrives). After ``done()`` turns true the file is
    read once more, so nothing written before the end is missed.
    """
    handle = None
    pending = ""
    try:
        while True:
            finished = done()  # asked before reading: what was written before it is still read below
            if handle is None and os.path.exists(path):
                handle = open(path, encoding="utf-8", errors="replace")
            if handle is not None:
                while True:
                    chunk = handle.read(65536)
                    if not chunk:
                        break
                    pending += chunk
                    *lines, pending = pending.split("\n")
                    yield from lines
            if finished:
                if pending:
                    yield pending
                return
            sleep(poll_s)
    finally:
        if handle is not None:
            handle.close()
