"""A program without a model: steps of a set pace, reported with ``mscluster.rank``; a checkpoint
save marked as a section; and, on request, one rank stuck in Python. The watchdog's tests and
``scripts/bench_recovery.py`` run it through ``command:`` (it starts in well under a second).

    python examples/paced_steps.py --step-s 0.1 --steps 600 --save-at 30 --save-s 60 --hang-rank 1 --hang-at 50

Every rank waits out the save (as data-parallel ranks wait for rank 0 in the next collective);
only rank 0 marks it: ``with mscluster.rank.section("checkpoint")``.
"""
from __future__ import annotations

import argparse
import time

from mscluster import rank


@rank.record
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-s", type=float, default=0.1, help="seconds per step")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--save-at", type=int, default=-1, help="after this step, a save of --save-s seconds")
    parser.add_argument("--save-s", type=float, default=0.0)
    parser.add_argument("--hang-rank", type=int, default=-1, help="this rank sleeps forever at --hang-at")
    parser.add_argument("--hang-at", type=int, default=-1)
    args = parser.parse_args()
    me = rank.rank_info()
    for step in range(1, args.steps + 1):
        time.sleep(args.step_s)
        if me.rank == args.hang_rank and step == args.hang_at:
            while True:  # stuck in Python: its beats go on, its steps do not
                time.sleep(1.0)
        rank.report(step, loss=1.0 / step)
        if step == args.save_at:
            if me.rank == 0:
                with rank.section("checkpoint"):
                    time.sleep(args.save_s)
            else:
                time.sleep(args.save_s)  # waits for rank 0, as in the next step's collective


if __name__ == "__main__":
    main()
