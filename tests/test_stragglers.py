"""Feature: straggler scores name a rank that runs slower than the others (launcher/stragglers.py).

Description: a synchronous data-parallel job is simulated step by step with seeded random step
times: each rank computes for 0.1 s x its jitter / its speed, then every rank waits in the
gradient exchange for the slowest, so every rank's reports come at the same wall time; each
report carries the rank's compute_s (its time outside the exchange) unless the test leaves it out.
Expectation: a rank slowed to 60% is named within 20 steps with its host and a relative score
near 0.6; with +-15% jitter on every rank and no slow one nobody is ever named; a rank that
recovers is un-named; compute_s is what tells the straggler (the wall intervals are the same for
every rank); without it, a rank that falls behind on its own is still seen from its intervals.
"""
from __future__ import annotations

import random
from typing import Callable, Optional

import pytest

from launcher.spec import StragglerAction, StragglerSpec
from launcher.stragglers import Change, StragglerChange, StragglerScorer, describe

RANKS = 8
BASE_S = 0.1
EXCHANGE_S = 0.02


def host_of(rank: int) -> str:
    return f"10.0.0.{rank // 4 + 1}"


def simulate(scorer: StragglerScorer, steps: int, speed: Callable[[int, int], float], seed: int,
             jitter: float = 0.15, with_compute: bool = True) -> list[tuple[int, StragglerChange]]:
    """Every (step, change) the scorer reports over ``steps`` synchronous steps."""
    rng = random.Random(seed)
    now, changes = 1000.0, []
    for step in range(1, steps + 1):
        compute = [BASE_S * rng.uniform(1 - jitter, 1 + jitter) / speed(r, step) for r in range(RANKS)]
        now += max(compute) + EXCHANGE_S  # every rank leaves the exchange when the slowest arrives
        for rank in range(RANKS):
            change = scorer.observe(rank, host_of(rank), step, now, compute[rank] if with_compute else None)
            if change is not None:
                changes.append((step, change))
    return changes


def slowed(rank: int, start: int, end: Optional[int] = None, speed: float = 0.6) -> Callable[[int, int], float]:
    return lambda r, step: speed if r == rank and step >= start and (end is None or step < end) else 1.0


@pytest.mark.parametrize("seed", range(5))
def test_a_rank_slowed_to_60_percent_is_named_within_20_steps(seed):
    scorer = StragglerScorer(StragglerSpec())
    changes = simulate(scorer, 120, slowed(5, start=40), seed)
    assert len(changes) == 1, changes
    step, change = changes[0]
    assert change.change is Change.NAMED and change.score.rank == 5 and change.score.host == "10.0.0.2"
    assert step - 40 < 20, f"named {step - 40} steps after it slowed"
    assert 0.5 < change.score.relative < 0.72
    assert 0.5 < change.score.individual < 0.72  # it was as fast as the others before
    assert 40 <= change.score.since_step <= step
    assert [s.rank for s in scorer.stragglers()] == [5]
    line = describe(change.score, scorer.spec.window_steps)
    assert "rank 5 on 10.0.0.2" in line and "over its last 10 steps" in line


@pytest.mark.parametrize("seed", range(20))
def test_a_fault_free_run_with_15_percent_jitter_names_nobody(seed):
    scorer = StragglerScorer(StragglerSpec())
    assert simulate(scorer, 500, lambda r, step: 1.0, seed) == []
    assert scorer.stragglers() == []
    assert len(scorer.scores()) == RANKS  # every rank was scored, none came below the threshold for long


def test_a_rank_that_recovers_is_no_longer_named():
    scorer = StragglerScorer(StragglerSpec())
    changes = simulate(scorer, 160, slowed(2, start=30, end=80), seed=7)
    assert [(c.change, c.score.rank) for _, c in changes] == [(Change.NAMED, 2), (Change.RECOVERED, 2)]
    recovered_at = changes[1][0]
    assert 80 < recovered_at <= 80 + 2 * scorer.spec.window_steps
    assert scorer.stragglers() == []


def test_compute_s_tells_the_straggler_from_the_ranks_waiting_for_it():
    # without compute_s every rank's interval is the slowest one's: the scores cannot tell them apart
    blind = StragglerScorer(StragglerSpec())
    assert simulate(blind, 120, slowed(5, start=20), seed=3, with_compute=False) == []
    assert all(s.relative > 0.9 for s in blind.scores())
    seeing = StragglerScorer(StragglerSpec())
    named = [c.score.rank for _, c in simulate(seeing, 120, slowed(5, start=20), seed=3)]
    assert named == [5]


def test_without_compute_s_a_rank_that_falls_behind_is_seen_from_its_intervals():
    scorer = StragglerScorer(StragglerSpec())
    rng = random.Random(11)
    clocks = [1000.0] * RANKS
    named = []
    for step in range(1, 80):  # each rank on its own (no exchange holds it back): rank 3 at half speed
        for rank in range(RANKS):
            clocks[rank] += BASE_S * rng.uniform(0.85, 1.15) / (0.5 if rank == 3 else 1.0)
            change = scorer.observe(rank, host_of(rank), step, clocks[rank])
            if change is not None:
                named.append((change.change, change.score.rank))
    assert named == [(Change.NAMED, 3)]


def test_action_off_scores_nothing_and_a_resumed_attempt_restarts_the_window():
    off = StragglerScorer(StragglerSpec(action=StragglerAction.OFF))
    assert simulate(off, 80, slowed(1, start=10), seed=1) == [] and off.scores() == []
    scorer = StragglerScorer(StragglerSpec(window_steps=4))
    for rank in range(2):
        for step in range(1, 6):
            scorer.observe(rank, "h", step, 10.0 + step, compute_s=0.1)
    scorer.observe(0, "h", 2, 100.0, compute_s=0.1)  # resumed from step 1: its window starts again
    assert len(scorer.ranks[0].times) == 1 and len(scorer.ranks[1].times) == 4
