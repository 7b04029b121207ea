"""Feature: the gradient mean of one host's ranks through shared memory (trainer.hostexchange).

Description: real processes (no MindSpore) join one exchange by its abstract socket and average
arrays through the shared memory file, as the trainer's ranks do every step.
Expectation: every rank gets the exact same mean (the same bytes, whatever the rank), over
several steps; nothing is left in /dev/shm; a rank whose peer died says which one and fails
(after its wait for the launcher); ranks of two jobs on one host do not meet; a rank with a
different model size is refused in one line.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from trainer import hostexchange
from trainer.hostexchange import (HostExchangeError, HostLayout, HostLink, HostMean, chunk_bounds, grad_exchange,
                                  socket_name)

CTX = multiprocessing.get_context("fork")


def test_chunks_cover_every_element_once():
    for total, parts in [(10, 3), (3, 5), (23_520_842, 8), (0, 2), (7, 1)]:
        bounds = chunk_bounds(total, parts)
        assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1


def test_layout_groups_the_ranks_of_one_local_index():
    assert HostLayout(rank=5, local_rank=1, local_size=4, world_size=12).peers_of_index() == [1, 5, 9]
    assert HostLayout(rank=5, local_rank=1, local_size=4, world_size=12).first_rank == 4


def _grads(rank: int, step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 * rank + step)
    return [rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(1001).astype(np.float32)]


def _rank(key: str, local_rank: int, size: int, steps: int, queue, die_at: int = -1, wait_s: float = 0.0,
          timeout_s: float = 20) -> None:
    hostexchange.ORPHAN_WAIT_S = wait_s
    layout = HostLayout(local_rank, local_rank, size, size)
    total = 15 + 1001
    try:
        mean = HostMean(HostLink(socket_name(key, layout), local_rank, size, (size + 1) * total * 4, timeout_s=timeout_s),
                        total)
        for step in range(steps):
            if step == die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            queue.put((local_rank, step, mean.mean(_grads(local_rank, step), 1.0 / size).tobytes()))
    except HostExchangeError as exc:
        queue.put((local_rank, "error", str(exc)))


def _run(size: int, steps: int, key: str, kwargs=None):
    kwargs = kwargs or {}
    queue = CTX.Queue()
    procs = [CTX.Process(target=_rank, args=(key, r, size, steps, queue), kwargs=kwargs.get(r, {}))
             for r in range(size)]
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + 60
    while len(results) < size * steps and time.monotonic() < deadline:
        try:
            results.append(queue.get(timeout=1))
        except Exception:
            if not any(p.is_alive() for p in procs) and queue.empty():
                break
    for p in procs:
        p.join(timeout=30)
    return results, procs


def test_every_rank_gets_the_same_exact_mean_every_step():
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    results, procs = _run(3, 4, f"test-{os.getpid()}-mean")
    assert all(p.exitcode == 0 for p in procs)
    for step in range(4):
        answers = {r: data for r, s, data in results if s == step}
        assert sorted(answers) == [0, 1, 2]
        assert len(set(answers.values())) == 1, "the ranks got different bytes"
        got = np.frombuffer(answers[0], np.float32)
        expected = np.mean([np.concatenate([g.ravel() for g in _grads(r, step)]) for r in range(3)], axis=0)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after <= before, f"left in /dev/shm: {sorted(after - before)}"


def test_a_rank_whose_peer_died_names_it_and_fails():
    results, procs = _run(2, 3, f"test-{os.getpid()}-dead", {1: {"die_at": 1}, 0: {"wait_s": 0.1}})
    errors = [r for r in results if r[1] == "error"]
    assert errors == [(0, "error", "local rank 1 of this host left the gradient exchange")]
    assert procs[1].exitcode == -signal.SIGKILL


def test_two_jobs_on_one_host_do_not_meet():
    queue = CTX.Queue()
    a = CTX.Process(target=_rank, args=(f"test-{os.getpid()}-a", 0, 2, 1, queue), kwargs={"timeout_s": 1.5})
    b = CTX.Process(target=_rank, args=(f"test-{os.getpid()}-b", 1, 2, 1, queue), kwargs={"timeout_s": 1.5})
    a.start(), b.start()
    a.join(timeout=40), b.join(timeout=40)
    errors = sorted(queue.get(timeout=5) for _ in range(2))
    assert errors[0][:2] == (0, "error") and "did not join the gradient exchange" in errors[0][2]
    assert errors[1][:2] == (1, "error") and "did not open the gradient exchange" in errors[1][2]


def _sized(key: str, local_rank: int, nbytes: int, queue) -> None:
    layout = HostLayout(local_rank, local_rank, 2, 2)
    try:
        HostLink(socket_name(key, layout), local_rank, 2, nbytes, timeout_s=10)
        queue.put((local_rank, "ok"))
    except HostExchangeError as exc:
        queue.put((local_rank, str(exc)))


def test_a_rank_of_another_model_size_is_refused():
    queue = CTX.Queue()
    key = f"test-{os.getpid()}-size"
    procs = [CTX.Process(target=_sized, args=(key, r, 4096 * (r + 1), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    answers = dict(queue.get(timeout=5) for _ in range(2))
    assert answers[1] == ("local rank 0 shares 4096 bytes, this rank expects 8192: the ranks of this host run "
                          "different models")


@pytest.mark.parametrize("env,same", [
    ({"MS_SCHED_PORT": "1"}, False), ({"MSCLUSTER_RESTART_COUNT": "1"}, False), ({}, True)])
def test_the_key_changes_with_the_job_and_its_attempt(env, same):
    base = {"MS_SCHED_HOST": "10.0.0.1", "MS_SCHED_PORT": "2", "MSCLUSTER_JOB_DIR": "/j", "MSCLUSTER_RESTART_COUNT": "0"}
    assert (hostexchange.exchange_key(base) == hostexchange.exchange_key({**base, **env})) is same


@pytest.mark.parametrize("setting,backend,world,local,buckets,expected", [
    ("auto", "dynamic_cluster", 2, 2, 0, "shared_memory"),   # the demo: 2 ranks on one host
    ("auto", "dynamic_cluster", 4, 2, 0, "shared_memory"),   # 2 hosts x 2: shared memory, then AllReduce
    ("auto", "dynamic_cluster", 2, 1, 0, "collective"),      # one rank per host: nothing to share
    ("auto", "dynamic_cluster", 2, 2, 8, "collective"),      # buckets tune the collective: it is asked for
    ("auto", "hccl", 8, 8, 0, "collective"),                 # Ascend: HCCL on the devices
    ("auto", "dynamic_cluster/Ascend", 8, 8, 0, "collective"),  # Ascend started as msrun does: HCCL too
    ("collective", "dynamic_cluster", 2, 2, 0, "collective"),
    ("shared_memory", "dynamic_cluster", 2, 1, 0, "shared_memory"),
    ("auto", "single", 1, 1, 0, "none"),
])
def test_auto_picks_shared_memory_where_a_host_runs_several_cpu_ranks(setting, backend, world, local, buckets,
                                                                        expected):
    from mscluster.rank import RankInfo
    from trainer.config import TrainConfig

    backend, _, target = backend.partition("/")
    info = RankInfo(rank=0, world_size=world, local_size=local, backend=backend, device_target=target or "CPU")
    assert grad_exchange(TrainConfig(grad_exchange=setting, grad_buckets=buckets), info) == expected


def test_shared_memory_asked_for_under_hccl_is_one_line():
    from mscluster.rank import RankInfo
    from trainer.config import TrainConfig
    from trainer.errors import ConfigError

    with pytest.raises(ConfigError, match="^grad_exchange: shared_memory is for backend cpu"):
        grad_exchange(TrainConfig(grad_exchange="shared_memory"), RankInfo(world_size=8, local_size=8, backend="hccl",
                                                                      device_target="Ascend"))


def test_a_float16_exchange_asked_for_is_the_collectives_unless_shared_memory_is():
    from mscluster.rank import RankInfo
    from trainer.config import TrainConfig

    info = RankInfo(world_size=2, local_size=2, backend="dynamic_cluster")
    assert grad_exchange(TrainConfig(grad_allreduce_dtype="float16"), info) == "collective"
    assert grad_exchange(TrainConfig(grad_allreduce_dtype="float16", grad_exchange="shared_memory"), info) == \
        "shared_memory"  # then float16 is what the hosts' AllReduce carries
    assert grad_exchange(TrainConfig(sink_mode=True), info) == "collective"  # a sink runs MindSpore's own step


def test_a_worker_skips_the_cluster_teardown_only_past_its_last_collective_under_the_agent():
    """A rank that leaves right after its last collective returned left another waiting in it for good
    (its bytes were still on the way): only the shared-memory barrier of a one-host job says none are."""
    from trainer.distributed import skips_cluster_teardown

    agent = {"MS_ROLE": "MS_WORKER", "MSCLUSTER_EVENT_FD": "5"}
    assert skips_cluster_teardown(agent, past_last_collective=True)
    assert not skips_cluster_teardown(agent, past_last_collective=False)  # several hosts, or MindSpore's step
    assert not skips_cluster_teardown({"MS_ROLE": "MS_WORKER"}, past_last_collective=True)  # msrun's scheduler waits
    assert not skips_cluster_teardown({**agent, "MS_ROLE": "MS_SCHED"}, past_last_collective=True)
