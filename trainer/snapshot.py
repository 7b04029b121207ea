"""In-memory snapshots: the pure decisions (no MindSpore, no I/O but reading a sidecar).

A snapshot is a checkpoint in the same verified format (``trainer.checkpoint``: the .ckpt, its
sidecar with the SHA-256), written by the same code into a job-owned tmpfs folder per host
(``mscluster.jobfiles.snapshot_dir``), which outlives the rank that wrote it. These functions decide:
how often to take one (``auto_interval``), which snapshot every host resumes from
(``newest_common``), and whether memory or the disk checkpoint wins (``pick_source``). The
launcher (which never imports MindSpore) and the trainer use the same functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

AUTO = "auto"
STALL_BUDGET = 0.01  # auto: the training stall a snapshot may cost, as a share of step time
AUTO_PROBE_STEPS = 4  # auto: steps timed (after the first, which compiles) before the measured snapshot
MAX_AUTO_INTERVAL = 10000  # auto never waits longer than this many steps between snapshots


def auto_interval(stall_s: float, write_s: float, step_s: float, budget: float = STALL_BUDGET) -> int:
    """The most frequent snapshot interval (in steps) whose stall stays within ``budget`` of step time.

    Args:
        stall_s: seconds one snapshot holds the training step up (the BatchNorm average and the copy).
        write_s: seconds the background write of one snapshot takes; the next may not start before it
            ends (it would wait for it: a stall), so the interval also covers the write.
        step_s: seconds one training step takes (measured, without snapshots).

    Returns:
        ``n`` >= 1 with ``stall_s / (n * step_s) <= budget`` and ``n * step_s >= write_s``.
    """
    if step_s <= 0:
        return MAX_AUTO_INTERVAL
    by_stall = math.ceil(max(stall_s, 0.0) / (budget * step_s) - 1e-9)
    by_write = math.ceil(max(write_s, 0.0) / step_s - 1e-9)
    return int(min(max(1, by_stall, by_write), MAX_AUTO_INTERVAL))


def stall_share(stall_s: float, step_s: float, interval: int) -> float:
    """The share of training time one snapshot every ``interval`` steps costs (``stall / (interval x step)``)."""
    return stall_s / (interval * step_s) if interval > 0 and step_s > 0 else 0.0


@dataclass(frozen=True)
class Found:
    """The newest complete snapshot one host holds: its file name, step and SHA-256 (from its sidecar)."""

    name: str
    global_step: int
    sha256: str
    size: int


@dataclass(frozen=True)
class Choice:
    """The snapshot every host resumes from: where to read it and which hosts need a copy."""

    found: Found
    source: str  # a host that holds it
    missing: tuple[str, ...]  # hosts that hold no snapshot, an older one, or other bytes at that step


def newest_common(held: Mapping[str, Optional[Found]]) -> Optional[Choice]:
    """The newest snapshot any host holds, the host to read it from, and the hosts to copy it to.

    Several hosts at the newest step with different digests: the one most hosts hold wins (ties:
    the first host in order), so as few copies as possible are made. None: no host kept one.
    """
    present = [(host, f) for host, f in held.items() if f is not None]
    if not present:
        return None
    top = max(f.global_step for _, f in present)
    at_top = [(host, f) for host, f in present if f.global_step == top]
    votes: dict[str, int] = {}
    for _, f in at_top:
        votes[f.sha256] = votes.get(f.sha256, 0) + 1
    best = max(votes, key=lambda sha: (votes[sha], -next(i for i, (_, f) in enumerate(at_top) if f.sha256 == sha)))
    source, found = next((h, f) for h, f in at_top if f.sha256 == best)
    missing = tuple(h for h in held if held[h] is None or held[h].sha256 != best or held[h].global_step != top)
    return Choice(found=found, source=source, missing=missing)


def pick_source(memory_step: Optional[int], disk_step: Optional[int]) -> str:
    """``memory`` when a snapshot exists and is at least as new as the newest good disk checkpoint,
    ``disk`` when only a checkpoint (or a newer one) exists, ``none`` for a fresh start."""
    if memory_step is not None and (disk_step is None or memory_step >= disk_step):
        return "memory"
    return "disk" if disk_step is not None else "none"
