"""Unit tests: the launcher<->agent protocol, core splitting, and the failure table."""
from __future__ import annotations

import math

import pytest

from launcher.protocol import (AgentSpec, Done, Exited, Output, ProcessSpec, ProtocolError, Relayed, Started,
                               decode_message, encode_message, split_cpus)
from launcher.report import RankFailure, format_failures, order_failures
from mscluster import events


def test_agent_spec_survives_the_wire():
    spec = AgentSpec(host="10.0.0.2", job_dir="/runs/j", attempt=1, grace_period=2.5, bind_cores=False,
                     files=(("train.yaml", "lr: 0.1\n"), ("rank_table.json", "{}")),
                     processes=(ProcessSpec("rank3", ("python", "-m", "x"), (("A", "1 2 'q'"),), rank=3,
                                            device_id=3, cpus=(2, 3), local_rank=1, local_size=2),
                                ProcessSpec("scheduler", ("python",), (), cpus=None)))
    assert AgentSpec.from_json(spec.to_json()) == spec


def test_every_agent_message_survives_the_wire():
    progress = events.Progress(step=7, time=1.5, epoch=2, loss=0.25, scalars={"img_per_s": 300.0})
    for msg in (Started("rank0", 41, (0, 1)), Output("rank1", "hello {\"ev\": \"exit\"}", "stderr"),
                Relayed("rank0", progress), Relayed("rank2", events.Eval(3, 2.0, {"top1": 0.9})),
                Relayed("scheduler", events.Checkpoint("/c/x.ckpt", 9, 3.0)),
                Exited("rank1", 1, None, "SIGKILL", 12.5), Done(True)):
        assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize("line, why", [
    ("Traceback (most recent call last):", "not a message"),
    ('{"ev": "out", "name": "../../etc/passwd", "line": "x"}', "unknown process name"),
    ('{"ev": "out", "name": "rank1", "line": 3}', "line must be str"),
    ('{"ev": "started", "name": "rank1", "pid": "12"}', "pid must be an integer"),
    ('{"ev": "exit", "name": "rank1", "rank": 1, "code": 1, "signal": null, "time": "now"}', "time"),
    ('{"ev": "exit", "name": "rank1", "rank": 1, "code": 1, "signal": null, "time": 1, "error": "x"}', "error"),
    ('{"ev": "event", "name": "rank1", "event": {"v": 1, "kind": "progress", "time": 1, "step": -1}}', "step"),
    ('{"ev": "launch_missiles"}', "unknown message kind"),
    ('[1, 2]', "not a message"),
])
def test_a_bad_agent_message_is_refused_with_the_reason(line, why):
    with pytest.raises(ProtocolError, match=why):
        decode_message(line)


def test_rank_events_round_trip_and_keep_a_diverged_loss():
    nan_loss = events.decode(events.encode(events.Progress(step=1, time=1.0, loss=float("nan"))))
    assert math.isnan(nan_loss.loss) and nan_loss.step == 1 and nan_loss.scalars == {}
    ev = events.Eval(epoch=4, time=2.0, metrics={"top1": 0.5, "loss": 1.25})
    assert events.decode(events.encode(ev)) == ev
    assert events.decode(events.encode(events.Finished(time=3.0))) == events.Finished(time=3.0)


@pytest.mark.parametrize("line, why", [
    ('{"v": 1, "kind": "progress", "time": 1}', "step must be an integer"),
    ('{"v": 2, "kind": "progress", "time": 1, "step": 1}', "unknown event version"),
    ('{"v": 1, "kind": "progress", "time": 1, "step": 1, "scalars": {"bad name": 1}}', "not a valid name"),
    ('{"v": 1, "kind": "progress", "time": 1, "step": 1, "scalars": {"x": "1"}}', "must be a number"),
    ('{"v": 1, "kind": "progress", "time": 1, "step": 1, "extra": 1}', "unknown field"),
    ('{"v": 1, "kind": "checkpoint", "time": 1, "step": 1, "path": ""}', "path"),
    ('{"v": 1, "kind": "progress", "time": NaN, "step": 1}', "finite"),
    ('{"v": 1, "kind": "', "not JSON"),
    ("x" * 20000, "longer than"),
])
def test_a_bad_event_is_refused_with_the_reason(line, why):
    with pytest.raises(events.EventError, match=why):
        events.decode(line)


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
