"""Feature: the stall watchdog names the stuck rank, with its stack, and the job comes back.

Description: the culprit rules on made-up liveness and real py-spy output; then a real 2-rank job
of the built-in trainer with a short ``stall_timeout`` and ``restarts: 1``: rank 1 frozen with
SIGSTOP mid-run. A tiny program (``examples/paced_steps.py``): stuck in Python, its stacks read
by py-spy and by faulthandler; and with default settings a save (a section of its own), then SIGSTOP.
Expectation: within three missed beats + 10 s the failure table names the frozen rank as the
frozen root cause (and why), or a rank stuck in Python with its sleeping frame;
with defaults the save gets its own limit and a stopped rank is named within 20 s; every rank's stack is in
``errors/stacks-attempt0/``; the restart completes from the checkpoint and nothing is left.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from helpers import job_processes, kill_group, launch_argv, rank_step, start_launch, wait_for, write_cluster
from launcher import watchdog
from launcher.spec import WatchdogSpec

SPY_WAITING = """Process 4242: python -m mscluster_cli train --config j/train.attempt0.yaml
Python v3.11.7 (/usr/bin/python3.11)

Thread 4242 (idle): "MainThread"
    __call__ (mindspore/common/api.py:1077)
    _run_construct (mindspore/nn/cell.py:711)
    _train_process (mindspore/train/model.py:1322)
    train (trainer/train.py:290)
Thread 4250 (idle): "mscluster-beat"
    _beat (mscluster/rank.py:231)
"""
SPY_SLEEPING = """Process 4243: python -m mscluster_cli train --config j/train.attempt0.yaml
Python v3.11.7 (/usr/bin/python3.11)

Thread 4243 (idle): "MainThread"
    hang_in_python (trainer/faults.py:59)
    on_train_step_end (trainer/faults.py:53)
    on_train_step_end (mindspore/train/callback/_callback.py:402)
"""
FAULTHANDLER_SLEEPING = """Thread 0x00007f8b4cbfe640 (most recent call first):
  File "/work/main/mscluster/rank.py", line 231 in _beat
  File "/usr/lib/python3.11/threading.py", line 975 in run

Current thread 0x00007f8b5a6e8740 (most recent call first):
  File "/work/main/trainer/faults.py", line 59 in hang_in_python
  File "/work/main/trainer/faults.py", line 53 in on_train_step_end
  File "/v/lib/python3.11/site-packages/mindspore/train/callback/_callback.py", line 402 in on_train_step_end

"""
SPY_IN_EXCHANGE = """Process 4244: python -m mscluster_cli train --config j/train.attempt0.yaml
Python v3.11.7 (/usr/bin/python3.11)

Thread 4244 (idle): "MainThread"
    _recv_exact (trainer/hostexchange.py:167)
    barrier (trainer/hostexchange.py:232)
    mean (trainer/hostexchange.py:291)
    step (trainer/trainstep.py:300)
"""
SPEC = WatchdogSpec(stall_timeout=30, startup_timeout=60, beat_interval=2)


def _ranks(*specs):
    return [watchdog.Liveness(f"rank{i}", "h", i, last_beat=beat, last_step=step, last_progress=progress)
            for i, (beat, step, progress) in enumerate(specs)]


def test_a_stall_is_counted_from_the_last_step_or_from_the_start():
    ranks = _ranks((99.0, 5, 60.0), (99.0, 5, 80.0), (None, None, None))  # rank 2 never beat: not watched
    assert [r.name for r in watchdog.stalled(ranks, now=100.0, started_at=0.0, spec=SPEC)] == ["rank0"]
    fresh = _ranks((99.0, None, None))
    assert watchdog.stalled(fresh, now=59.0, started_at=0.0, spec=SPEC) == []
    assert len(watchdog.stalled(fresh, now=61.0, started_at=0.0, spec=SPEC)) == 1
    assert watchdog.stalled(ranks, 1000.0, 0.0, WatchdogSpec(enabled=False)) == []


def test_the_culprit_is_the_frozen_then_the_slowest_then_the_one_outside_mindspore():
    frozen = _ranks((40.0, 5, 60.0), (40.0, 5, 60.0))  # both silent: the waiting one holds the GIL in MindSpore
    c = watchdog.choose_culprit(frozen, {"rank0": SPY_WAITING, "rank1": SPY_WAITING}, now=100.0, spec=SPEC,
                                states={"rank0": "S", "rank1": "T"})
    assert c.name == "rank1" and c.why == ("frozen: the kernel says it is stopped (SIGSTOP or a debugger); "
                                           "its liveness beats stopped 60 s ago")
    assert watchdog.choose_culprit(frozen, {"rank0": SPY_WAITING, "rank1": SPY_WAITING}, now=100.0, spec=SPEC,
                                   states={"rank0": "S", "rank1": "S"}).name is None  # silence inside MindSpore
    c = watchdog.choose_culprit(_ranks((99.0, 5, 60.0), (40.0, 5, 60.0)), {}, now=100.0, spec=SPEC)
    assert c.name == "rank1" and c.why.startswith("frozen: its liveness beats stopped 60 s ago")
    behind = _ranks((99.0, 7, 60.0), (99.0, 6, 60.0))
    c = watchdog.choose_culprit(behind, {}, now=100.0, spec=SPEC)
    assert c.name == "rank1" and "the lowest step: at step 6 while others reached 7" == c.why
    alike = _ranks((99.0, 6, 60.0), (99.0, 6, 60.0))
    c = watchdog.choose_culprit(alike, {"rank0": SPY_SLEEPING, "rank1": SPY_WAITING}, now=100.0, spec=SPEC)
    assert c.name == "rank0" and "hang_in_python (trainer/faults.py:59)" in c.why
    c = watchdog.choose_culprit(alike, {"rank0": SPY_WAITING, "rank1": SPY_WAITING}, now=100.0, spec=SPEC)
    assert c.name is None and c.why == "all ranks stuck at step 6"
    # a rank in the shared-memory exchange's barrier waits for the others, as in MindSpore's collective
    c = watchdog.choose_culprit(alike, {"rank0": SPY_SLEEPING, "rank1": SPY_IN_EXCHANGE}, now=100.0, spec=SPEC)
    assert c.name == "rank0" and "hang_in_python (trainer/faults.py:59)" in c.why


def test_the_main_threads_frames_come_from_a_py_spy_dump():
    assert watchdog.main_thread_frames(SPY_WAITING)[:2] == ["__call__ (mindspore/common/api.py:1077)",
                                                            "_run_construct (mindspore/nn/cell.py:711)"]
    assert watchdog.inside_mindspore(SPY_WAITING) and not watchdog.inside_mindspore(SPY_SLEEPING)
    assert watchdog.inside_mindspore(SPY_IN_EXCHANGE)
    assert watchdog.main_thread_frames(FAULTHANDLER_SLEEPING)[:2] == [
        "hang_in_python (/work/main/trainer/faults.py:59)", "on_train_step_end (/work/main/trainer/faults.py:53)"]
    assert not watchdog.inside_mindspore(FAULTHANDLER_SLEEPING)


STALL_S = 10  # the jobs below: a rank stalls after 10 s without a step


def _job(tmp_path, cifar_dir, **train):
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, restarts=1,
                            watchdog={"stall_timeout": STALL_S, "startup_timeout": 240, "beat_interval": 1},
                            train={"epochs": 1, "steps_per_epoch": 14, "save_every_steps": 4, "lr": 0.01, **train})
    job = str(tmp_path / "job")
    return start_launch(cluster, "--job-dir", job, cwd=str(tmp_path), capture=True), job


def _rank_pid(job: str, rank: int) -> int:
    for p in job_processes(job):
        env = p.environ()
        if env.get("MS_ROLE") == "MS_WORKER" and env.get("RANK_ID") == str(rank):
            return p.pid
    raise AssertionError(f"no rank {rank}")


PACED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "paced_steps.py")


def _paced_cluster(tmp_path, *args: str, **fields) -> str:
    """2 local ranks of examples/paced_steps.py; ascend from a rank table: no scheduler waiting for a
    MindSpore that this program never starts (launch it with --skip-preflight: no NPU tools here)."""
    data = {"name": "paced", "backend": "ascend", "ascend": {"init": "ranktable"}, "python": sys.executable,
            "workdir": str(tmp_path / "runs"), "command": ["python", PACED, *args],
            "hosts": [{"address": "localhost", "devices": 2, "device_ips": {0: "10.9.0.1", 1: "10.9.0.2"}}],
            **fields}
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump(data))
    return str(cluster)


@pytest.mark.integration
def test_a_frozen_rank_is_named_with_its_stack_and_the_job_comes_back(tmp_path, cifar_dir):
    proc, job = _job(tmp_path, cifar_dir)
    try:
        wait_for(lambda: rank_step(job, 1) >= 6, 240, what="rank 1 at step 6")
        os.kill(_rank_pid(job, 1), signal.SIGSTOP)
        frozen_at = time.time()
        out, err = proc.communicate(timeout=300)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    result = json.load(open(os.path.join(job, "result.json")))
    root = result["attempts"][0]["root_cause"]
    assert (root["name"], root["reason"]) == ("rank1", "frozen"), root
    assert "frozen: the kernel says it is stopped (SIGSTOP or a debugger)" in root["message"]
    detected_at = root["time"] + result["attempts"][0]["detect_s"]  # its last step + the time it hung
    frozen_after = WatchdogSpec(beat_interval=1).frozen_after  # three beats missed, before stall_timeout
    assert frozen_after - 1 <= detected_at - frozen_at <= frozen_after + 10
    assert os.path.getsize(os.path.join(job, "errors", "stacks-attempt0", "rank_1.txt")) > 0
    assert os.path.getsize(os.path.join(job, "errors", "stacks-attempt0", "rank_0.txt")) > 0
    assert result["status"] == "succeeded" and result["restarts"] == 1
    first = result["attempts"][0]  # goodput: detection, recovery, the steps redone
    assert first["detect_s"] >= frozen_after - 1 and first["recover_s"] > 0 and first["steps_lost"] >= 0
    assert 0 < result["goodput"]["effective_training_ratio"] < 1
    # the restart compiled against the job's compile cache (how much sooner: scripts/bench_recovery.py)
    assert os.listdir(os.path.join(job, "compile_cache"))
    goodput = os.listdir(os.path.join(job, "tensorboard", "launcher"))
    assert any(name.startswith("events.out.tfevents") for name in goodput)
    assert job_processes(job) == []


@pytest.mark.integration
@pytest.mark.parametrize("stacks", ["auto", "faulthandler"])
def test_a_rank_stuck_in_python_is_named_with_its_sleeping_frame(tmp_path, stacks):
    """A program through ``command:`` (examples/paced_steps.py, no MindSpore) stuck in Python at step 10,
    beating: named stalled with the frame it sleeps in, read by py-spy (auto, here as root), or by the
    rank's own faulthandler where ptrace is not allowed (mscluster.rank registers it)."""
    cluster = _paced_cluster(tmp_path, "--step-s", "0.05", "--steps", "100000", "--hang-rank", "1", "--hang-at", "10",
                             watchdog={"stall_timeout": 5, "beat_interval": 0.5, "stacks": stacks})
    job = str(tmp_path / "job")
    proc = subprocess.run(launch_argv(cluster, "--skip-preflight", "--job-dir", job), cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = json.load(open(os.path.join(job, "result.json")))["attempts"][0]["root_cause"]
    assert (root["name"], root["reason"]) == ("rank1", "stalled"), root
    # not synchronous: rank 0 steps on, so rank 1 is also the lowest step (the watchdog's second rule)
    assert root["message"].startswith("stalled: no step for 5 s") and "last step 9" in root["message"], root
    assert any("paced_steps.py" in frame for frame in root["traceback_tail"]), root
    stack = open(os.path.join(job, "errors", "stacks-attempt0", "rank_1.txt")).read()
    assert ("Current thread" in stack) == (stacks == "faulthandler") and "paced_steps.py" in stack
    assert re.search(r"root cause .* localhost\s+1\s+1\s+stalled", proc.stdout + proc.stderr)
    assert job_processes(job) == []


@pytest.mark.integration
def test_sighup_to_the_launcher_stops_the_job_as_interrupted(tmp_path):
    """A closed terminal: the job stops as on Ctrl-C, result.json says which signal, and no process survives."""
    cluster = _paced_cluster(tmp_path, "--step-s", "0.1", "--steps", "100000")
    job = str(tmp_path / "job")
    proc = start_launch(cluster, "--skip-preflight", "--job-dir", job, cwd=str(tmp_path))
    try:
        wait_for(lambda: rank_step(job, 0) >= 2, 120, what="rank 0 at step 2")
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 130
    finally:
        kill_group(proc)
    result = json.load(open(os.path.join(job, "result.json")))
    assert (result["status"], result["interrupted_by"]) == ("interrupted", "SIGHUP")
    assert job_processes(job) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: a job folder on a disk that fills up."""
    from sshd_util import skip_or_fail

    if os.geteuid() != 0:
        skip_or_fail("needs root to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.integration
def test_a_full_disk_under_the_job_folder_stops_the_job_naming_the_cause(tmp_path, small_disk):
    chatty = "import time\nwhile True:\n    print('x' * 2000, flush=True)\n    time.sleep(0.001)\n"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "full", "hosts": [{"address": "localhost", "devices": 1}],
                                    "workdir": str(small_disk), "env": {"MS_TOPO_TIMEOUT": "60"},
                                    "command": ["python", "-c", chatty]}))
    proc = subprocess.run(launch_argv(str(path), "-q"), cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    root = next(line for line in proc.stderr.splitlines() if line.strip().startswith("root cause "))
    assert root.split()[3:6] == [socket.gethostname(), "launcher", "-"] and "disk" in root, proc.stderr
    assert "No space left on device" in proc.stderr
    job = os.path.join(str(small_disk), os.listdir(str(small_disk))[0])
    assert job_processes(job) == []




@pytest.mark.integration
def test_with_defaults_a_save_gets_its_own_limit_and_a_stopped_rank_is_frozen_within_20_s(tmp_path):
    """A tiny program (no MindSpore), default watchdog settings: 0.1 s steps, a 1 s save on rank 0 marked
    as a section, then rank 1 SIGSTOPped. The save's limit is learned apart from the step's (the logic,
    a save longer than any step limit included, is tests/test_watchdog_limits.py's; a real 60 s save is
    scripts/bench_recovery.py's long_save_default). About 20 s."""
    cluster = _paced_cluster(tmp_path, "--step-s", "0.1", "--steps", "100000", "--save-at", "10", "--save-s", "1")
    job = str(tmp_path / "job")
    proc = start_launch(cluster, "--skip-preflight", "--job-dir", job, cwd=str(tmp_path), capture=True)
    try:
        wait_for(lambda: rank_step(job, 1) >= 20, 120, what="rank 1 past the save, at step 20")
        status = json.load(open(os.path.join(job, "status.json")))
        # the save was seen as a section (its limit was AUTO_FIRST_S until then): 3 x 1 s, raised to the floor
        assert status["watchdog"]["limits"]["checkpoint"] == watchdog.AUTO_FLOOR_S
        assert status["watchdog"]["limits"]["step"] == watchdog.AUTO_FLOOR_S
        os.kill(status["processes"]["rank1"]["pid"], signal.SIGSTOP)
        frozen_at = time.time()
        out, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    result = json.load(open(os.path.join(job, "result.json")))
    first = result["attempts"][0]
    root = first["root_cause"]
    assert (root["name"], root["reason"]) == ("rank1", "frozen"), root
    assert "frozen: the kernel says it is stopped (SIGSTOP or a debugger)" in root["message"]
    assert root["time"] + first["detect_s"] - frozen_at <= 20.0  # named (the teardown began) within 20 s
    assert os.path.getsize(os.path.join(job, "errors", "stacks-attempt0", "rank_1.txt")) > 0
    assert job_processes(job) == []
