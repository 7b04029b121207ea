"""A rank for scale runs: a user program (``command:``) that behaves like a training rank, without MindSpore.

It reports a progress event per step at ``--step-rate`` steps per second through ``mscluster.rank``,
prints ``--lines-per-s`` log lines per second (each stamped with the wall time it was written, so
a reader of ``logs/all.log`` can measure the lag), and with ``--fail-step K --fail-rank R`` rank R
raises at step K (under ``@record``: its error file holds the time). A few MB of memory and a few
ms of CPU per second each, so 512 of them fit on 2 cores.

    python [-S] tests/fleet_rank.py --steps 20 --step-rate 10 --lines-per-s 50 [--fail-step 5 --fail-rank 37]

A step is a compute part (``--compute-s`` seconds of waiting plus ``--work`` rounds of hashing, real
CPU that a cgroup quota slows down), reported as the progress scalar ``compute_s`` (what
``launcher.stragglers`` scores), then a wait until the step's wall time (1 / ``--step-rate``) is up;
a step whose compute takes longer simply ends later (no catching up). ``--slow-ranks 8-15
--slow-factor 0.6 --slow-from-step 30``: those ranks compute at 60% speed from step 30 on (a
straggler from inside). ``--slow-file F`` (relative: in the job folder), read again whenever it
changes: ``{"<host address>": speed}``, the ranks of those hosts compute at that speed from then on
(a bench slows a host while the job runs; the speed follows the host, not the rank numbers).

Checkpoint and resume (``--ckpt-every K``): every rank advances the same "weights", a 64-bit hash
chain of the step number and the world size only (`advance`), so a run's final weights equal a
fault-free run's exactly when every step was done once from the right state. Every K steps rank 0
writes ``<job>/fleet_state.json`` (step, weights; tmp + rename) and reports it with
``mscluster.rank.report_checkpoint`` (the launcher's steps lost count from it); at start every rank
resumes from that file. At the end rank 0 writes ``<job>/fleet_final.json`` (step, weights, world size).
With ``--ckpt-every``, SIGUSR1 (the launcher's preempt word: Slurm's warning, or ``stragglers.action:
exclude``) makes rank 0 save the step it is at and exit 75, as the built-in trainer does; the other
ranks go on until the launcher stops them.

Every line it prints: ``fleet rank=R line=N t=<unix time, 6 decimals>``; at the end
``fleet rank=R done steps=S``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Optional

# Runs with ``python -S`` too (no site: 10 ms less per start, 5 s for 512 ranks on 2 cores)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mscluster.rank import (PREEMPT_EXIT, preempt_requested, rank_info, record, report,  # noqa: E402
                            report_checkpoint, watch_preemption)

LINE_STAMP = " t="  # what follows it on a log line: the time the rank wrote the line
STATE_FILE = "fleet_state.json"  # in the job folder: the newest checkpoint (rank 0 writes it)
FINAL_FILE = "fleet_final.json"  # in the job folder: the weights at the end
INITIAL_WEIGHTS = int.from_bytes(hashlib.sha256(b"mscluster fleet").digest()[:8], "big")


class InjectedFailure(RuntimeError):
    """The failure a scale run asked for."""


def advance(weights: int, step: int, world_size: int) -> int:
    """The weights after ``step``: a hash of the weights before, the step and the world size."""
    data = weights.to_bytes(8, "big") + step.to_bytes(8, "big") + world_size.to_bytes(8, "big")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def weights_after(steps: int, world_size: int) -> int:
    """The weights of a fault-free run of ``steps`` steps."""
    weights = INITIAL_WEIGHTS
    for step in range(1, steps + 1):
        weights = advance(weights, step, world_size)
    return weights


def parse_ranks(text: str) -> frozenset[int]:
    """``"8-15,3"`` -> {3, 8, ..., 15}."""
    ranks: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        ranks.update(range(int(low), int(high or low) + 1))
    return frozenset(ranks)


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_state(job_dir: Optional[str]) -> tuple[int, int]:
    """(step, weights) of the newest checkpoint in ``job_dir``; (0, the initial weights) without one."""
    if job_dir:
        try:
            with open(os.path.join(job_dir, STATE_FILE), encoding="utf-8") as handle:
                state = json.load(handle)
            return int(state["step"]), int(state["weights"], 16)
        except FileNotFoundError:
            pass
    return 0, INITIAL_WEIGHTS


def _work(rounds: int) -> None:
    data = b"x" * 64
    for _ in range(rounds):
        data = hashlib.sha256(data).digest()


class _SlowFile:
    """The speed ``--slow-file`` gives this rank's host (1.0 without the file), read again when it changes."""

    def __init__(self, path: str, host: str):
        self.path, self.host, self.stamp, self.speed = path, host, None, 1.0

    def current(self) -> float:
        if not self.path:
            return 1.0
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            return self.speed
        if stamp != self.stamp:
            self.stamp = stamp
            try:
                with open(self.path, encoding="utf-8") as handle:
                    speed = float(json.load(handle).get(self.host, 1.0))
                self.speed = speed if 0 < speed <= 1 else 1.0
            except (OSError, ValueError, AttributeError, TypeError):
                pass  # half-written: read it at the next step
        return self.speed


class _Lines:
    """The stamped log lines, written while the rank waits."""

    def __init__(self, rank: int, per_s: float, start: float):
        self.rank, self.count = rank, 0
        self.every = 1.0 / per_s if per_s > 0 else None
        self.next = start if self.every else float("inf")

    def sleep_until(self, until: float) -> None:
        out = sys.stdout
        while True:
            now = time.monotonic()
            while self.next <= now:
                out.write(f"fleet rank={self.rank} line={self.count}{LINE_STAMP}{time.time():.6f}\n")
                self.count += 1
                self.next += self.every  # type: ignore[operator]
            out.flush()
            if now >= until:
                return
            time.sleep(max(min(until, self.next) - now, 0.0))


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-rate", type=float, default=10.0, help="steps per second")
    parser.add_argument("--lines-per-s", type=float, default=0.0, help="log lines per second")
    parser.add_argument("--fail-step", type=int, default=None)
    parser.add_argument("--fail-rank", type=int, default=None)
    parser.add_argument("--ckpt-every", type=int, default=0, help="rank 0 saves every K steps (0: never)")
    parser.add_argument("--compute-s", type=float, default=0.0, help="seconds of compute per step (waiting)")
    parser.add_argument("--work", type=int, default=0, help="rounds of hashing per step (CPU)")
    parser.add_argument("--slow-ranks", default="", help="ranks that compute slower, e.g. 8-15,3")
    parser.add_argument("--slow-factor", type=float, default=1.0, help="their speed (0.6: 60%%)")
    parser.add_argument("--slow-from-step", type=int, default=1)
    parser.add_argument("--slow-file", default="", help="JSON {host: speed}, relative to the job folder")
    args = parser.parse_args(argv)
    me = rank_info()
    slow = me.rank in parse_ranks(args.slow_ranks) and 0 < args.slow_factor < 1
    step, weights = load_state(me.job_dir) if args.ckpt_every > 0 else (0, INITIAL_WEIGHTS)
    step_every = 1.0 / args.step_rate
    if args.ckpt_every > 0:
        watch_preemption()
    slow_file = _SlowFile(os.path.join(me.job_dir or ".", args.slow_file) if args.slow_file else "", me.host)
    timed = args.compute_s > 0 or args.work > 0 or slow or bool(args.slow_file)
    lines = _Lines(me.rank, args.lines_per_s, time.monotonic())
    began = time.monotonic()
    while step < args.steps:
        began_compute = time.monotonic()
        if args.work:
            _work(args.work)
        lines.sleep_until(began_compute + args.compute_s)
        compute = time.monotonic() - began_compute
        speed = args.slow_factor if slow and step + 1 >= args.slow_from_step else 1.0
        speed = min(speed, slow_file.current())
        if speed < 1.0:
            lines.sleep_until(began_compute + compute / speed)
            compute = time.monotonic() - began_compute
        lines.sleep_until(began + step_every)
        began = max(began + step_every, time.monotonic())  # after a pause (SIGSTOP): no burst of steps
        step += 1
        weights = advance(weights, step, me.world_size)
        if step == args.fail_step and me.rank == args.fail_rank:
            raise InjectedFailure(f"injected failure at step {step} on rank {me.rank}")
        report(step, epoch=1, loss=1.0 / step, **({"compute_s": compute} if timed else {}))
        # rank 0 alone leaves: another rank's exit 75 would end the attempt before rank 0 had saved
        preempted = args.ckpt_every > 0 and me.rank == 0 and preempt_requested()
        if args.ckpt_every > 0 and me.rank == 0 and me.job_dir and (step % args.ckpt_every == 0 or preempted):
            path = os.path.join(me.job_dir, STATE_FILE)
            _write_json(path, {"step": step, "weights": f"{weights:016x}", "world_size": me.world_size})
            report_checkpoint(path, step)
        if preempted:
            print(f"fleet rank={me.rank} preempted at step={step}", flush=True)
            os._exit(PREEMPT_EXIT)  # as the built-in trainer: not "finished" (record), and no error file
    if me.rank == 0 and me.job_dir:
        _write_json(os.path.join(me.job_dir, FINAL_FILE),
                    {"step": step, "weights": f"{weights:016x}", "world_size": me.world_size})
    print(f"fleet rank={me.rank} done steps={step}", flush=True)
    return 0


@record
def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
