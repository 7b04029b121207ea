"""Which hosts the next attempt runs on: spares take a failed host's place, excluded hosts cool down.

Feature: launcher/hostpool.py (pure; the launch loop in launcher/launch.py asks it after each failed attempt).
Description: failures as the supervisor records them (a lost host, a rank's crash, a straggler) are read;
    the host at fault is excluded, a spare takes its position and its device ids (every rank keeps its
    number), or with elastic: the host is left out, or nothing can take its place; an excluded host is
    not used again until its cooldown (doubling with each exclusion) ends, then comes back as a spare.
Expectation: the host lists, the moves, the cooldowns and the lines a user reads.
"""
from __future__ import annotations

import pytest

from launcher.hostpool import (MAX_COOLDOWN_FACTOR, HostPool, Move, Why, cooldown_for, host_cause)
from launcher.report import RankFailure
from launcher.spec import ElasticSpec, ExclusionSpec, HostSpec


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def host(n: int, devices=(0, 1), **kw) -> HostSpec:
    return HostSpec(address=f"10.0.0.{n}", devices=tuple(devices), **kw)


def lost(address: str, t: float = 1.0) -> RankFailure:
    return RankFailure(host=address, name="agent", rank=None, device_id=None, exit_code=None, signal=None, time=t,
                       log_path=None, message=f"no word from the agent on {address} for 15 s", reason="lost")


def crash(address: str, rank: int, t: float = 1.0, signal=None, message="ValueError: bad batch",
          teardown=False) -> RankFailure:
    return RankFailure(host=address, name=f"rank{rank}", rank=rank, device_id=0, exit_code=None if signal else 1,
                       signal=signal, time=t, log_path=None, message=message, during_teardown=teardown)


def pool(spares=1, elastic=None, after=2, cooldown=300.0, clock=None) -> HostPool:
    return HostPool([host(1), host(2), host(3)], [host(9 - i) for i in range(spares)],
                    ExclusionSpec(after=after, cooldown=cooldown), elastic, clock or Clock())


def test_a_lost_host_is_replaced_by_a_spare_in_its_place_with_its_devices():
    p = pool()
    [change] = p.after_attempt([lost("10.0.0.2"), crash("10.0.0.1", 0, t=2.0, teardown=True)], attempt=0)
    assert change.move is Move.REPLACED and change.exclusion.why is Why.LOST
    assert [h.address for h in p.hosts] == ["10.0.0.1", "10.0.0.9", "10.0.0.3"]  # ranks 2, 3 move to the spare
    assert p.hosts[1].devices == (0, 1) and p.world_size == 6 and p.spares == []
    line = change.describe()
    assert line.startswith("mscluster: spare 10.0.0.9 takes the place of 10.0.0.2 (lost: agent: no word from")
    assert "excluded for 300 s" in line and "devices [0, 1] move there" in line
    assert p.to_dict()["excluded"][0]["host"] == "10.0.0.2" and p.to_dict()["excluded"][0]["attempt"] == 0


def test_the_spare_takes_the_replaced_hosts_device_ids_and_its_own_ips_for_them():
    p = HostPool([host(1, devices=(2, 3))], [host(9, devices=(0, 1, 2, 3), device_ips=((0, "1.1.1.0"), (3, "1.1.1.3")))],
                 ExclusionSpec())
    p.after_attempt([lost("10.0.0.1")], 0)
    assert p.hosts[0].address == "10.0.0.9" and p.hosts[0].devices == (2, 3)
    assert p.hosts[0].device_ips == ((3, "1.1.1.3"),)


def test_two_hosts_lost_at_once_are_both_replaced_while_spares_last_then_the_job_must_end():
    p = pool(spares=1)
    changes = p.after_attempt([lost("10.0.0.3", t=1.0), lost("10.0.0.1", t=1.5)], attempt=1)
    assert [(c.exclusion.host, c.move) for c in changes] == [("10.0.0.3", Move.REPLACED), ("10.0.0.1", Move.NO_SPARE)]
    assert "no spare is left" in changes[1].describe()


def test_with_elastic_and_no_spare_the_host_is_left_out_down_to_min_hosts():
    p = pool(spares=0, elastic=ElasticSpec(min_hosts=2))
    [change] = p.after_attempt([lost("10.0.0.2")], 0)
    assert change.move is Move.SHRUNK and [h.address for h in p.hosts] == ["10.0.0.1", "10.0.0.3"]
    assert "left out" in change.describe()
    [again] = p.after_attempt([lost("10.0.0.1")], 1)
    assert again.move is Move.NO_SPARE and len(p.hosts) == 2  # 2 is the least the job may shrink to


@pytest.mark.parametrize("failure, why", [
    (lost("10.0.0.1"), Why.LOST),
    (RankFailure(host="10.0.0.1", name="agent", rank=None, device_id=None, exit_code=255, signal=None, time=1.0,
                 log_path=None, message="Timeout opening channel."), Why.LOST),
    (crash("10.0.0.1", 0, signal="SIGBUS", message=""), Why.HARDWARE),
    (crash("10.0.0.1", 0, message="RuntimeError: EI9999: Inner Error! HCCL execute failed"), Why.HARDWARE),
    (crash("10.0.0.1", 0, message="RuntimeError: aclrtSynchronizeStream failed, ret: 507011"), Why.HARDWARE),
    (RankFailure(host="10.0.0.1", name="rank0", rank=0, device_id=0, exit_code=None, signal=None, time=1.0,
                 log_path=None, reason="straggler"), Why.STRAGGLER),
    (crash("10.0.0.1", 0), None),  # the program's own error: counted, not excluded at once
    (crash("10.0.0.1", 0, signal="SIGKILL", message=""), None),
    (RankFailure(host="10.0.0.1", name="rank0", rank=0, device_id=0, exit_code=None, signal=None, time=1.0,
                 log_path=None, reason="stalled"), None),
])
def test_what_counts_as_the_hosts_fault(failure, why):
    assert host_cause(failure) is why


def test_a_host_that_is_the_root_cause_of_after_failures_is_excluded_then_and_not_before():
    p = pool(after=2)
    assert p.after_attempt([crash("10.0.0.3", 4)], 0) == []  # the first time: restart in place
    assert p.after_attempt([crash("10.0.0.1", 0)], 1) == []  # another host: its own count
    [change] = p.after_attempt([crash("10.0.0.3", 5)], 2)
    assert change.exclusion.why is Why.REPEATED and change.move is Move.REPLACED
    assert "the root cause of 2 failed attempts, the last rank 5: exit 1" in change.describe()


def test_without_spares_or_elastic_repeated_failures_restart_in_place_and_a_lost_host_ends_the_job():
    p = pool(spares=0, after=1)
    assert p.after_attempt([crash("10.0.0.3", 4)], 0) == [] and p.after_attempt([crash("10.0.0.3", 4)], 1) == []
    [change] = p.after_attempt([lost("10.0.0.3")], 2)
    assert change.move is Move.NO_SPARE and change.exclusion.host == "10.0.0.3"


def test_a_failure_caused_by_the_teardown_counts_for_nobody():
    p = pool(after=1)
    changes = p.after_attempt([crash("10.0.0.1", 0, t=1.0), crash("10.0.0.2", 2, t=0.5, teardown=True)], 0)
    assert [c.exclusion.host for c in changes] == ["10.0.0.1"]


def test_the_cooldown_doubles_with_each_exclusion_of_the_same_host_up_to_its_cap():
    spec = ExclusionSpec(cooldown=60.0)
    assert [cooldown_for(spec, n) for n in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert cooldown_for(spec, 50) == 60.0 * MAX_COOLDOWN_FACTOR


def test_an_excluded_host_is_refused_until_its_cooldown_ends_then_stands_by_again():
    clock = Clock()
    p = pool(spares=1, cooldown=100.0, clock=clock)
    p.after_attempt([lost("10.0.0.2")], 0)
    clock.now += 99.0
    assert p.cooled_down() == []  # still cooling: not offered back
    assert "cooldown" not in str(p.to_dict()["spares"]) and p.to_dict()["excluded"][0]["cooling"] is True
    clock.now += 1.0
    [back] = p.cooled_down()
    assert back.address == "10.0.0.2"
    p.readmit(back)  # its pre-flight passed
    assert [s.address for s in p.spares] == ["10.0.0.2"] and p.to_dict()["excluded"] == []
    # excluded again: twice as long
    [change] = p.after_attempt([lost("10.0.0.9")], 1)
    assert change.spare is not None and change.spare.address == "10.0.0.2"
    [again] = p.after_attempt([lost("10.0.0.2")], 2)
    assert again.exclusion.count == 2 and again.exclusion.until - again.exclusion.at == 200.0


def test_a_spare_that_fails_its_preflight_stands_down_without_touching_the_jobs_hosts():
    p = pool(spares=2)
    e = p.exclude("10.0.0.9", Why.PREFLIGHT, "cannot import mindspore", None)
    assert [s.address for s in p.spares] == ["10.0.0.8"] and [h.address for h in p.hosts] == \
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert e.attempt is None and p.to_dict()["excluded"][0]["why"] == "pre-flight"
