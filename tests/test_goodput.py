"""Feature: goodput says where a failure's time went.

Description: ``launcher.launch``'s pure record helpers are given a failed attempt and its restart.
Expectation: detection, teardown, restart, the first resumed step, the steps lost and where the
state came from are in the record (and so in ``result.json``), survive a round trip through
``result.json``, and read as one line of the job's final report.
"""
from __future__ import annotations

from launcher.launch import STATE_FROM_DISK, AttemptRecord, format_recovery, recovery_lines, with_recovery


def _failed() -> AttemptRecord:
    root = {"name": "rank1", "host": "h1", "time": 1000.0, "reason": "frozen"}
    return AttemptRecord(attempt=0, ok=False, started_at=900.0, ended_at=1020.0, root_cause=root, detect_s=16.0,
                         teardown_s=4.0, steps_lost=3)


def test_a_restart_fills_in_where_the_failures_time_went():
    record = with_recovery(_failed(), started_at=1025.0, first_step_at=1034.5)
    assert (record.restart_s, record.resume_first_step_s, record.recover_s) == (5.0, 9.5, 34.5)
    assert AttemptRecord.from_dict(record.to_dict()) == record
    recovery = AttemptRecord(attempt=1, ok=True, state_from=STATE_FROM_DISK, resumed_step=40)
    assert AttemptRecord.from_dict(recovery.to_dict()) == recovery
    line = ("mscluster: attempt 0's failure (rank1 on h1): detected in 16.0 s, teardown 4.0 s, restart 5.0 s, "
            "first step 9.5 s, back in 34.5 s, 3 step(s) lost, state from disk (step 40)")
    assert format_recovery(record, recovery) == line
    assert recovery_lines([record, recovery]) == [line]


def test_a_restart_that_never_stepped_keeps_what_is_known():
    record = with_recovery(_failed(), started_at=1025.0, first_step_at=None)
    assert record.resume_first_step_s is None and record.recover_s is None and record.restart_s == 5.0
    assert format_recovery(record).endswith("restart 5.0 s, 3 step(s) lost")  # no attempt after it: no source
    assert AttemptRecord.from_dict({**record.to_dict(), "resumed_step": "x"}).resumed_step is None
    assert format_recovery(AttemptRecord(attempt=1, ok=True)) is None
    assert recovery_lines([AttemptRecord(attempt=0, ok=True)]) == []


def test_the_ranks_named_stragglers_survive_result_json_and_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from launcher.launch import write_goodput_scalars

    named = {"host": "10.0.0.2", "rank": 3, "relative": 0.58, "individual": 0.6, "since_step": 41, "since": 1200.0}
    record = AttemptRecord(attempt=0, ok=True, started_at=900.0, ended_at=1300.0, stragglers=[named])
    assert AttemptRecord.from_dict(record.to_dict()) == record
    assert AttemptRecord.from_dict({"attempt": 0, "stragglers": "rank 3"}).stragglers == []  # a bad entry: none
    write_goodput_scalars(str(tmp_path), [record, AttemptRecord(attempt=1, ok=True)])
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "launcher"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("stragglers/named")] == [(0, 1.0), (1, 0.0)]
    assert [round(e.value, 3) for e in acc.Scalars("stragglers/rank3_relative")] == [0.58]
