"""Feature: shrinking at the same global batch (``launcher.elastic.keep_global_batch``), in-process.

Description: cluster files parsed as a user writes them; the hosts that remain after a shrink.
Expectation: the new cluster runs the remaining hosts with ``grad_accumulation`` raised so that
batch_size x ranks x k is unchanged and asks the trainer to resume the larger world's checkpoint;
what cannot be kept exactly is refused in one line naming the numbers and
``elastic.allow_batch_change``, and with it the nearest k and the changed batch are said; a
``command:`` has no k to raise, which the line says.
"""
from __future__ import annotations

import json

import pytest
import yaml

from launcher.config import parse_cluster
from launcher.elastic import BatchNotKept, keep_global_batch, nearest_k
from launcher.errors import LauncherError


def _cluster(hosts=4, devices=4, train=None, elastic=None, **fields):
    data = {"name": "t", "backend": "cpu", "restarts": 2,
            "hosts": [{"address": f"10.0.0.{i + 1}", "devices": devices} for i in range(hosts)],
            "elastic": {"min_hosts": 1, **(elastic or {})},
            **fields}
    if "command" not in fields:
        data["train"] = {"batch_size": 8, "lr": 0.1, **(train or {})}
    return parse_cluster(yaml.safe_dump(data), "c.yaml")


def test_the_global_batch_is_kept_by_raising_grad_accumulation():
    cluster = _cluster(train={"grad_accumulation": 3})
    left = cluster.hosts[:1] + cluster.hosts[2:]  # 10.0.0.2 is gone
    shrink = keep_global_batch(cluster, left)
    assert shrink.describe() == ("mscluster: shrinking from 16 to 12 ranks (hosts: 10.0.0.2 left out): "
                                 "grad_accumulation 3 -> 4, global batch 384 kept")
    assert (shrink.old_world, shrink.new_world, shrink.old_k, shrink.new_k) == (16, 12, 3, 4)
    assert shrink.old_batch == shrink.new_batch == 384 and shrink.batch_kept
    new = shrink.cluster
    assert new.hosts == left and new.world_size == 12
    assert new.train_config.grad_accumulation == 4 and new.train_config.global_batch_size(12) == 384
    # the trainer resumes the 16-rank checkpoint at the same position; the batch is the same: nothing renumbered
    assert new.train_config.resume_other_world and not new.train_config.resume_other_accumulation
    assert new.train_config.batch_size == 8 and new.train_config.lr == 0.1  # the rest of train: as it was
    assert cluster.train_config.grad_accumulation == 3 and cluster.world_size == 16  # the old one unchanged
    assert json.loads(json.dumps(shrink.to_dict())) == {
        "left_out": ["10.0.0.2"], "old_world": 16, "new_world": 12, "old_k": 3, "new_k": 4, "old_batch": 384,
        "new_batch": 384, "batch_kept": True}


def test_hosts_of_different_sizes_count_ranks_not_hosts():
    data = {"name": "t", "backend": "cpu", "restarts": 1, "elastic": {"min_hosts": 1},
            "hosts": [{"address": "10.0.0.1", "devices": 4}, {"address": "10.0.0.2", "devices": 2},
                      {"address": "10.0.0.3", "devices": 2}],
            "train": {"batch_size": 4}}
    cluster = parse_cluster(yaml.safe_dump(data), "c.yaml")
    shrink = keep_global_batch(cluster, cluster.hosts[1:])  # 8 ranks -> 4
    assert (shrink.new_world, shrink.new_k, shrink.new_batch) == (4, 2, 32)
    assert "(hosts: 10.0.0.1 left out)" in shrink.describe()


def test_a_batch_that_cannot_be_kept_is_refused_in_one_line_naming_the_numbers():
    cluster = _cluster()
    with pytest.raises(BatchNotKept) as caught:
        keep_global_batch(cluster, cluster.hosts[:3])
    assert isinstance(caught.value, LauncherError) and caught.value.exit_code == 2
    assert str(caught.value) == ("elastic: batch_size 8 x 16 ranks x grad_accumulation 1 = global batch 128 cannot "
                                 "be kept on 12 ranks (128 / (8 x 12) = 1.33333 is no whole grad_accumulation); set "
                                 "elastic.allow_batch_change: true to go on with grad_accumulation 1 (global batch 96)")


def test_allow_batch_change_goes_on_with_the_nearest_k_and_says_the_changed_batch():
    cluster = _cluster(devices=2, train={"grad_accumulation": 5}, elastic={"allow_batch_change": True})
    shrink = keep_global_batch(cluster, cluster.hosts[:3])  # 8 ranks x 5 = 40 micro-batches over 6 ranks: 6.67
    assert (shrink.new_k, shrink.old_batch, shrink.new_batch) == (7, 320, 336) and not shrink.batch_kept
    assert shrink.describe() == ("mscluster: shrinking from 8 to 6 ranks (hosts: 10.0.0.4 left out): "
                                 "grad_accumulation 5 -> 7, global batch 320 -> 336 (elastic.allow_batch_change)")
    # another global batch: the trainer carries the position over in images
    assert shrink.cluster.train_config.resume_other_world and shrink.cluster.train_config.resume_other_accumulation


def test_allow_batch_change_is_not_needed_when_the_batch_is_kept():
    cluster = _cluster(elastic={"allow_batch_change": True})
    shrink = keep_global_batch(cluster, cluster.hosts[:2])
    assert (shrink.new_k, shrink.new_batch) == (2, 128) and shrink.batch_kept
    assert not shrink.cluster.train_config.resume_other_accumulation


def test_nearest_k_is_at_least_one_and_takes_the_larger_of_two_equally_near():
    assert nearest_k(10, 100) == 1
    assert nearest_k(150, 100) == 2  # 100 and 200 are as near: the larger batch
    assert nearest_k(140, 100) == 1 and nearest_k(160, 100) == 2


def test_a_command_has_no_k_to_raise_and_says_what_the_program_sees():
    cluster = _cluster(command=["python", "my_train.py"])
    with pytest.raises(BatchNotKept) as caught:
        keep_global_batch(cluster, cluster.hosts[:3])
    assert str(caught.value) == ("elastic: shrinking from 16 to 12 ranks cannot keep the global batch of a command: "
                                 "there is no grad_accumulation to raise (the program sees the new world size in "
                                 "MS_WORKER_NUM / RANK_SIZE); set elastic.allow_batch_change: true if it adapts its "
                                 "batch itself")
    allowed = _cluster(command=["python", "my_train.py"], elastic={"allow_batch_change": True})
    shrink = keep_global_batch(allowed, allowed.hosts[:3])
    assert shrink.cluster.world_size == 12 and shrink.new_k is None and shrink.cluster.command == allowed.command
    assert shrink.describe() == ("mscluster: shrinking from 16 to 12 ranks (hosts: 10.0.0.4 left out): the program "
                                 "sees 12 ranks in MS_WORKER_NUM / RANK_SIZE (its global batch is its own; "
                                 "elastic.allow_batch_change)")


def test_a_k_the_train_section_refuses_is_one_line():
    cluster = _cluster(hosts=2, devices=1, train={"grad_accumulation": 1024})
    with pytest.raises(BatchNotKept) as caught:
        keep_global_batch(cluster, cluster.hosts[:1])
    assert str(caught.value).startswith("elastic: shrinking from 2 to 1 ranks needs grad_accumulation 2048, which "
                                        "train: refuses (train: grad_accumulation: at most 1024")
    assert "\n" not in str(caught.value)
    sinking = _cluster(train={"sink_mode": True})
    with pytest.raises(BatchNotKept, match="needs grad_accumulation 2, which train: refuses .*sink_mode"):
        keep_global_batch(sinking, sinking.hosts[:2])


def test_console_ranks_past_the_new_world_are_dropped():
    cluster = _cluster(console=[0, 13])
    assert keep_global_batch(cluster, cluster.hosts[:2]).cluster.console == (0,)
    everyone = _cluster(console="all")
    assert keep_global_batch(everyone, everyone.hosts[:2]).cluster.console is None


def test_the_launch_loop_shrinks_through_the_pool_and_keeps_the_batch():
    """The launch loop's step (launcher.launch.next_cluster) after a host is lost with no spare left."""
    from launcher.hostpool import HostPool, Move
    from launcher.launch import next_cluster
    from launcher.report import RankFailure

    cluster = _cluster(train={"grad_accumulation": 3})
    pool = HostPool(cluster.hosts, cluster.spares, cluster.exclusion, cluster.elastic)
    gone = RankFailure(host="10.0.0.3", name="agent", rank=None, device_id=None, exit_code=None, signal=None, time=1.0,
                       log_path=None, message="no word from the agent on 10.0.0.3 for 15 s", reason="lost")
    [change] = pool.after_attempt([gone], attempt=0)
    assert change.move is Move.SHRUNK
    shrunk, shrink = next_cluster(cluster, pool, shrinking=True)
    assert [h.address for h in shrunk.hosts] == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]
    assert shrunk.train_config.grad_accumulation == 4 and shrunk.train_config.global_batch_size(12) == 384
    assert shrink.describe() == ("mscluster: shrinking from 16 to 12 ranks (hosts: 10.0.0.3 left out): "
                                 "grad_accumulation 3 -> 4, global batch 384 kept")
