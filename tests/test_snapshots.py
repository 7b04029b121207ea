"""Feature: in-memory snapshots that outlive the rank (train: snapshot_every_steps).

Description: the pure decisions in-process (the auto interval, the newest common snapshot, memory
or disk); the launcher's host tool on real folders under /dev/shm through the real local executor
(survey, copy to a host that lost its snapshot, remove); then one real 2-rank job of the tiny
ResNet (one host: its local rank 0 keeps the snapshot; a cluster file may not name this machine
twice, so copies between hosts are the host tool's test above) whose rank 1 SIGKILLs itself at
step 11, after a snapshot (step 10) newer than the last disk checkpoint (step 6).
Expectation: the restart resumes from memory at the snapshot's step on both ranks, result.json
says so, the final weights equal an uninterrupted run's bit for bit, and nothing of either job is
left under /dev/shm.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading

import pytest

from launcher.executor import LocalExecutor
from launcher.jobplan import host_python
from launcher.snapshots import HostTool, folders, remove_all, restore, survey
from mscluster.jobfiles import SNAPSHOT_ROOT, is_snapshot_dir, snapshot_dir
from trainer import checkpoint as ckpt
from trainer.snapshot import Found, auto_interval, newest_common, pick_source, stall_share

from helpers import job_processes, kill_group, launch_argv, side_by_side, wait_for, write_cluster

# -- pure ------------------------------------------------------------------------------------------


def test_auto_interval_keeps_the_stall_at_or_below_one_percent():
    # 30 ms held up per snapshot at 100 ms steps: 30 steps is the most frequent within 1%
    assert auto_interval(0.030, 0.0, 0.100) == 30
    assert stall_share(0.030, 0.100, 30) <= 0.01 < stall_share(0.030, 0.100, 29)
    # the background write (4 s) must end before the next snapshot, or that one would wait for it
    assert auto_interval(0.001, 4.0, 0.100) == 40
    assert auto_interval(0.0, 0.0, 0.5) == 1  # free snapshots: every step
    assert auto_interval(5.0, 0.0, 0.0) == 10000  # no step time measured: the cap


def test_newest_common_takes_the_newest_and_names_the_hosts_to_copy_to():
    a = Found("ckpt_e0001_s000000010.ckpt", 10, "a" * 64, 100)
    old = Found("ckpt_e0001_s000000008.ckpt", 8, "b" * 64, 100)
    choice = newest_common({"h1": old, "h2": a, "h3": None})
    assert choice.found == a and choice.source == "h2" and choice.missing == ("h1", "h3")
    # one host holds other bytes at the same step: the digest most hosts hold wins, it gets a copy
    other = Found(a.name, 10, "c" * 64, 100)
    choice = newest_common({"h1": other, "h2": a, "h3": a})
    assert choice.found.sha256 == a.sha256 and choice.missing == ("h1",)
    assert newest_common({"h1": None, "h2": None}) is None


def test_memory_wins_unless_the_disk_checkpoint_is_newer():
    assert pick_source(10, 6) == "memory"
    assert pick_source(10, 10) == "memory"
    assert pick_source(8, 12) == "disk"
    assert pick_source(None, 6) == "disk"
    assert pick_source(None, None) == "none"


def test_only_mscluster_snapshot_folders_are_touched():
    folder = snapshot_dir("/x/jobs/my job", "10.0.0.1")
    assert folder.startswith(SNAPSHOT_ROOT + "/mscluster-my_job-") and folder.endswith("-10.0.0.1")
    assert is_snapshot_dir(folder)
    assert snapshot_dir("/x/a/job", "h") != snapshot_dir("/y/a/job", "h")  # two jobs named alike
    assert not is_snapshot_dir("/dev/shm") and not is_snapshot_dir("/tmp/mscluster-x")
    assert not is_snapshot_dir("/dev/shm/other")


# -- the host tool, through the real local executor ---------------------------------------------------


def _write_snapshot(folder: str, step: int, payload: bytes) -> None:
    ckpt.save(lambda p: open(p, "wb").write(payload), folder,
              dict(epoch=1, step_in_epoch=step - 6, global_step=step, dataset_seed=1, fingerprint={}, config={}))


@pytest.fixture
def two_hosts(tmp_path):
    dirs = folders(str(tmp_path / "job"), ["hostA", "hostB"])
    yield dirs
    for folder in dirs.values():
        shutil.rmtree(folder, ignore_errors=True)


def test_a_host_that_lost_its_snapshot_gets_the_newest_copied_and_all_is_removed(two_hosts):
    import sys

    dirs = two_hosts
    executor = LocalExecutor("localhost")
    tool = HostTool({"hostA": executor, "hostB": executor}, lambda h: sys.executable)
    _write_snapshot(dirs["hostA"], 8, b"state at 8")
    _write_snapshot(dirs["hostA"], 10, b"state at 10")
    ckpt.prune(dirs["hostA"], 1, newest=os.path.join(dirs["hostA"], ckpt.checkpoint_name(1, 4, 10)))
    assert survey(tool, dirs)["hostB"] is None  # hostB "rebooted": no folder at all
    choice = restore(tool, dirs)
    assert (choice.found.global_step, choice.source, choice.missing) == (10, "hostA", ("hostB",))
    held = survey(tool, dirs)
    assert held["hostA"] == held["hostB"] and held["hostB"].global_step == 10
    path, meta, _ = ckpt.latest_good(dirs["hostB"])
    assert open(path, "rb").read() == b"state at 10" and meta.global_step == 10
    assert remove_all(tool, dirs) == []
    assert not any(os.path.exists(d) for d in dirs.values())


def test_the_host_tool_refuses_any_other_folder(tmp_path):
    import sys

    tool = HostTool({"h": LocalExecutor("localhost")}, lambda h: sys.executable)
    victim = tmp_path / "keep"
    victim.mkdir()
    with pytest.raises(RuntimeError, match="not a snapshot folder"):
        tool.call("h", {"op": "remove", "dir": str(victim)})
    assert victim.is_dir()


# -- a real job ---------------------------------------------------------------------------------------

STEPS = 6
TRAIN = {"arch": "resnet18", "stem": "cifar", "width": 8, "image_size": 32, "batch_size": 16,
         "epochs": 2, "steps_per_epoch": STEPS, "save_every_steps": 0, "save_every_epochs": 1,
         "snapshot_every_steps": 2, "keep_max": 5, "lr": 0.05, "momentum": 0.9, "log_every_steps": 1,
         "eval_every_epochs": 0, "tensorboard": False, "grad_exchange": "collective"}
HOSTS = [{"address": "localhost", "devices": 2}]
FINAL = re.compile(r"^\[[^\]]+\] final rank=(\d) global_step=(\d+) loss=\S+ weights_sha256=(\w+)$", re.M)


def _ours(job: str) -> list[str]:
    mine = {os.path.basename(snapshot_dir(job, h["address"])) for h in HOSTS}
    return [n for n in os.listdir(SNAPSHOT_ROOT) if n in mine]


def _run(work, cifar_dir, train, restarts=0, on_line=None):
    cluster = write_cluster(str(work / "c.yaml"), cifar_dir, hosts=HOSTS, train={**TRAIN, **train}, restarts=restarts)
    job = str(work / "job")
    proc = subprocess.Popen(launch_argv(cluster, "--job-dir", job), cwd=str(work), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    timer = threading.Timer(300, kill_group, (proc,))
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, job)
        proc.wait()
    finally:
        timer.cancel()
        kill_group(proc)
    return proc.returncode, "".join(lines), job


@pytest.mark.integration
def test_a_sigkilled_rank_resumes_from_memory_bit_identical_and_leaves_no_memory(tmp_path, cifar_dir):
    (tmp_path / "ref").mkdir()
    (tmp_path / "kill").mkdir()
    kill = {"debug_fail_rank": 1, "debug_fail_step": 11, "debug_fail_signal": 9, "debug_fail_attempt": 0}
    with side_by_side({"ref": lambda: _run(tmp_path / "ref", cifar_dir, {}),
                       "kill": lambda: _run(tmp_path / "kill", cifar_dir, kill, restarts=1)}) as jobs:
        code, ref_out, ref_job = jobs["ref"].result()
        assert code == 0, ref_out[-3000:]
        assert _ours(ref_job) == []  # a job that succeeded leaves nothing under /dev/shm
        code, out, job = jobs["kill"].result()
    assert code == 0 and "after 1 restart(s)" in out, out[-3000:]
    # both ranks resumed from the host's memory at the snapshot's step, not the disk's step 6
    resumed = re.findall(r"^\[[^\]]+\] resumed from (\S+) epoch=(\d+) step=(\d+)$", out, re.M)
    assert len(resumed) == 2 and len(set(resumed)) == 1, out[-3000:]
    steps = {os.path.basename(p) for p, _, _ in resumed}
    assert steps in ({"ckpt_e0001_s000000010.ckpt"}, {"ckpt_e0001_s000000008.ckpt"}), resumed
    assert all(p.startswith(SNAPSHOT_ROOT + "/mscluster-") for p, _, _ in resumed)
    step = int(next(iter(steps))[-14:-5])
    result = json.load(open(os.path.join(job, "result.json")))
    first, second = result["attempts"]
    assert (second["state_from"], second["resumed_step"]) == ("memory", step)
    # steps lost: those after the snapshot (1 or 3), not the 5 since the disk checkpoint
    assert first["steps_lost"] == first["root_cause"]["last_step"] - step < 11 - 6
    # the same weights as the uninterrupted run, bit for bit, on every rank
    want = {(r, s, d) for r, s, d in FINAL.findall(ref_out)}
    assert {(r, s, d) for r, s, d in FINAL.findall(out)} == want and len(want) == 2
    assert _ours(job) == []  # nor does a job that failed once


@pytest.mark.integration
def test_a_sigkilled_launcher_leaves_no_snapshot_memory(tmp_path, cifar_dir):
    """The launcher dies by SIGKILL mid-job: its agents see the EOF (no stop came first) and remove it."""
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, hosts=HOSTS,
                            train={**TRAIN, "snapshot_every_steps": 1, "epochs": 50})
    job = str(tmp_path / "job")
    proc = subprocess.Popen(launch_argv(cluster, "--job-dir", job), cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        folder = snapshot_dir(job, "localhost")
        wait_for(lambda: os.path.isdir(folder) and any(n.endswith(".ckpt.json") for n in os.listdir(folder)),
                 timeout=240, what="the first snapshot")
        proc.kill()  # the launcher alone: its agents and ranks live on until they notice
        proc.wait()
        wait_for(lambda: not job_processes(job), timeout=60, what="the job's processes to end")
        assert _ours(job) == []
    finally:
        kill_group(proc)
        for h in HOSTS:
            shutil.rmtree(snapshot_dir(job, h["address"]), ignore_errors=True)
