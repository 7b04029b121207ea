"""Unit tests: the launcher<->agent protocol, core splitting, and the failure table."""
from __future__ import annotations

from launcher.protocol import AgentSpec, ProcessSpec, event, parse_event, split_cpus
from launcher.report import RankFailure, format_failures, order_failures


def test_agent_spec_survives_the_wire():
    spec = AgentSpec(host="10.0.0.2", job_dir="/runs/j", attempt=1, grace_period=2.5, bind_cores=False,
                     files=(("train.yaml", "lr: 0.1\n"), ("rank_table.json", "{}")),
                     processes=(ProcessSpec("rank3", ("python", "-m", "x"), (("A", "1 2 'q'"),), rank=3,
                                            device_id=3, cpus=(2, 3), local_rank=1, local_size=2),
                                ProcessSpec("scheduler", ("python",), (), cpus=None)))
    assert AgentSpec.from_json(spec.to_json()) == spec


def test_events_parse_and_other_lines_do_not():
    assert parse_event(event("exit", name="rank1", code=3)) == {"ev": "exit", "name": "rank1", "code": 3}
    assert parse_event("Traceback (most recent call last):") is None
    assert parse_event("{not json") is None
    assert parse_event('{"no": "ev"}') is None


def test_cores_split_evenly_and_never_overlap():
    assert [split_cpus(list(range(8)), r, 2) for r in range(2)] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [split_cpus([0, 1], r, 2) for r in range(2)] == [(0,), (1,)]
    assert [split_cpus([0, 1, 2], r, 2) for r in range(2)] == [(0,), (1,)]  # the odd core stays free
    assert [split_cpus([0, 1], r, 4) for r in range(4)] == [(0,), (1,), (0,), (1,)]  # more ranks: round robin
    assert split_cpus([], 0, 1) == ()


def _failure(name, rank, t, teardown=False, code=None, sig=None):
    return RankFailure(host="h", name=name, rank=rank, device_id=rank, exit_code=code, signal=sig, time=t,
                       log_path=f"logs/{name}.log", message="boom" if name == "rank2" else "",
                       traceback_tail=("Traceback", "ValueError: boom"), during_teardown=teardown)


def test_root_cause_is_the_first_failure_before_teardown():
    late_cause = _failure("rank2", 2, 105.0, code=3)
    stopped_early = _failure("rank0", 0, 100.0, teardown=True, sig="SIGTERM")
    early_cause = _failure("rank1", 1, 101.0, sig="SIGKILL")
    assert order_failures([late_cause, stopped_early, early_cause]) == [early_cause, late_cause, stopped_early]
    table = format_failures([late_cause, stopped_early, early_cause])
    rows = [line.split() for line in table.splitlines()[2:5]]
    assert [r[0] for r in rows] == ["root", "failed", "stopped"]
    assert rows[0][4:7] == ["1", "1", "SIGKILL"] and rows[1][3:7] == ["2", "2", "exit", "3"]
    assert "root cause (h, rank1):" in table and "| ValueError: boom" in table
