"""Start a MindSpore dynamic cluster by hand: one scheduler plus N workers, as real processes.

The trainer tests use this before (and independently of) the launcher, so that a trainer bug and
a launcher bug cannot hide each other. Every process gets its environment explicitly and its own
process group; whatever is still running at the end is killed by group.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from helpers import REPO_ROOT, free_port


@dataclass
class ProcessResult:
    role: str  # "scheduler" or "rank<N>"
    returncode: Optional[int]
    output: str


def trainer_command(set_pairs: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "mscluster_cli", "train", "--set", *set_pairs]


def run_dynamic_cluster(workers: int, set_pairs: Sequence[str], workdir: str, timeout: float = 240,
                        extra_env: Optional[Mapping[str, str]] = None, one_host: bool = False) -> list[ProcessResult]:
    """Run ``mscluster train`` as a scheduler plus ``workers`` workers; return each one's output.

    Results are in the order scheduler, rank 0, rank 1, ... Output goes to files under ``workdir``.
    ``one_host``: the workers are told they share this host (``LOCAL_RANK``/``LOCAL_SIZE``, as the
    launcher says it); without it each looks like the only rank of its host.
    """
    port = free_port()
    base = dict(os.environ)
    base.update(extra_env or {})
    base.update({"MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": str(port), "MS_WORKER_NUM": str(workers),
                 "MS_TOPO_TIMEOUT": "60", "PYTHONUNBUFFERED": "1",
                 "PYTHONPATH": REPO_ROOT + os.pathsep + base.get("PYTHONPATH", "")})
    roles = [("scheduler", {"MS_ROLE": "MS_SCHED"})]
    roles += [(f"rank{r}", {"MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(r), "RANK_ID": str(r),
                            "RANK_SIZE": str(workers),
                            **({"LOCAL_RANK": str(r), "LOCAL_SIZE": str(workers)} if one_host else {})})
              for r in range(workers)]
    procs = []
    try:
        for role, env in roles:
            log = open(os.path.join(workdir, f"{role}.log"), "w+")
            proc = subprocess.Popen(trainer_command(set_pairs), cwd=workdir, env={**base, **env},
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append((role, proc, log))
        deadline = time.monotonic() + timeout
        for _, proc, _ in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    results = []
    for role, proc, log in procs:
        log.seek(0)
        results.append(ProcessResult(role, proc.returncode, log.read()))
        log.close()
    return results
