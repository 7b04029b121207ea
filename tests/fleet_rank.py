"""A rank for scale runs: a user program (``command:``) that behaves like a training rank, without MindSpore.

It reports a progress event per step at ``--step-rate`` steps per second through ``mscluster.rank``,
prints ``--lines-per-s`` log lines per second (each stamped with the wall time it was written, so
a reader of ``logs/all.log`` can measure the lag), and with ``--fail-step K --fail-rank R`` rank R
raises at step K (under ``@record``: its error file holds the time). A few MB of memory and a few
ms of CPU per second each, so 512 of them fit on 2 cores.

    python [-S] tests/fleet_rank.py --steps 20 --step-rate 10 --lines-per-s 50 [--fail-step 5 --fail-rank 37]

Every line it prints: ``fleet rank=R line=N t=<unix time, 6 decimals>``; at the end
``fleet rank=R done steps=S``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# Runs with ``python -S`` too (no site: 10 ms less per start, 5 s for 512 ranks on 2 cores)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mscluster.rank import rank_info, record, report  # noqa: E402

LINE_STAMP = " t="  # what follows it on a log line: the time the rank wrote the line


class InjectedFailure(RuntimeError):
    """The failure a scale run asked for."""


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-rate", type=float, default=10.0, help="steps per second")
    parser.add_argument("--lines-per-s", type=float, default=0.0, help="log lines per second")
    parser.add_argument("--fail-step", type=int, default=None)
    parser.add_argument("--fail-rank", type=int, default=None)
    args = parser.parse_args(argv)
    me = rank_info()
    start = time.monotonic()
    step_every = 1.0 / args.step_rate
    line_every = 1.0 / args.lines_per_s if args.lines_per_s > 0 else None
    next_step, next_line = start + step_every, start if line_every else float("inf")
    step = lines = 0
    out = sys.stdout
    while step < args.steps:
        now = time.monotonic()
        while next_line <= now:
            out.write(f"fleet rank={me.rank} line={lines}{LINE_STAMP}{time.time():.6f}\n")
            lines += 1
            next_line += line_every  # type: ignore[operator]
        out.flush()
        if next_step <= now:
            step += 1
            next_step += step_every
            if step == args.fail_step and me.rank == args.fail_rank:
                raise InjectedFailure(f"injected failure at step {step} on rank {me.rank}")
            report(step, epoch=1, loss=1.0 / step)
            continue
        time.sleep(max(min(next_step, next_line) - time.monotonic(), 0.0))
    print(f"fleet rank={me.rank} done steps={step}", flush=True)
    return 0


@record
def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
