"""Feature: resume after failure, proven with real processes on CPU.

Description: 2-rank ``mscluster launch`` jobs of a tiny ResNet-18 (3 epochs of 6 steps, a cosine
schedule with warm-up, Momentum with weight decay, a checkpoint every 2 steps): one uninterrupted;
one whose rank 0 is SIGKILLed while a checkpoint is half-written and is restarted automatically;
two (gradient accumulation k=4, sink mode) whose rank 1 SIGKILLs itself in epoch 2; one that fails
on every attempt. Then single-process ``mscluster train`` runs against damaged and incompatible
checkpoints.
Expectation: the interrupted jobs end with checkpoints and weights bit-identical to the
uninterrupted job's, with the same loss and learning rate at every step after the resume (MindSpore
on CPU is bit-deterministic here: the largest difference measured is 0); a torn file is never
loaded; a job out of restarts exits 1 with the table, records every failure and leaves no
process; a bad checkpoint is skipped by name under ``auto`` and refused in one line when named;
an incompatible one is refused naming the differing keys, and nothing is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from helpers import REPO_ROOT, job_processes, kill_group, launch_argv, side_by_side, write_cluster

pytestmark = pytest.mark.integration

STEPS = 6  # per epoch; global steps 7..12 are epoch 2
TRAIN = {"arch": "resnet18", "stem": "cifar", "width": 8, "image_size": 32, "batch_size": 16,
         "epochs": 3, "steps_per_epoch": STEPS, "save_every_steps": 2, "keep_max": 20,
         "lr": 0.05, "lr_schedule": "cosine", "warmup_epochs": 1.0, "momentum": 0.9, "weight_decay": 1e-4,
         "log_every_steps": 1, "eval_every_epochs": 0, "tensorboard": True,
         "grad_exchange": "collective"}  # MindSpore's own step; the k=4 jobs below average through shared memory
FINAL = f"ckpt_e0003_s{3 * STEPS:09d}.ckpt"
FINAL_LINE = re.compile(r"^\[localhost:(\d)\] final rank=(\d) global_step=(\d+) loss=(\S+) weights_sha256=(\w+)$", re.M)
PROGRESS = re.compile(r"global_step=(\d+) loss=(\S+) lr=(\S+)")
SEPARATOR = "===== mscluster: attempt 1 (restart 1) ====="


def _launch(work, cifar_dir, train=None, restarts=0):
    cluster = write_cluster(str(work / "c.yaml"), cifar_dir, train={**TRAIN, **(train or {})}, restarts=restarts)
    job = str(work / "job")
    return cluster, job, launch_argv(cluster, "--job-dir", job)


def _finals(stdout: str) -> dict[int, tuple[int, str]]:
    """rank -> (global step, weights digest) from every rank's last line."""
    return {int(m.group(2)): (int(m.group(3)), m.group(5)) for m in FINAL_LINE.finditer(stdout)}


def _arrays(path: str) -> dict[str, np.ndarray]:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(path).items() if not isinstance(v, str)}


def _assert_same_state(got: str, want: str) -> None:
    a, b = _arrays(got), _arrays(want)
    assert a.keys() == b.keys()
    # weights, BatchNorm statistics, momentum buffers, global step: bit for bit
    worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)
    assert worst == 0.0, f"largest difference {worst}"


def _steps(log_text: str) -> list[tuple[int, str, str]]:
    return [(int(s), loss, lr) for s, loss, lr in PROGRESS.findall(log_text)]


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _run(work, cifar_dir, train=None, restarts=0) -> tuple[subprocess.CompletedProcess, str]:
    """A launch to its end: (its process, its job folder)."""
    _, job, argv = _launch(work, cifar_dir, train=train, restarts=restarts)
    proc = subprocess.run(argv, cwd=str(work), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, job


def _uninterrupted(work, cifar_dir, train=None) -> tuple[subprocess.CompletedProcess, str]:
    proc, job = _run(work, cifar_dir, train=train)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, job


# -- the same with gradient accumulation: k = 4 micro-batches of 4 images per optimizer step ---------

# 16 images a step per rank, as above; steps are optimizer steps; the cpu default exchange (shared memory)
K4 = {"grad_accumulation": 4, "batch_size": 4, "grad_exchange": "auto"}
# rank 1 SIGKILLs itself at step 11 (epoch 2) on the first attempt
SIGKILL_11 = {"debug_fail_rank": 1, "debug_fail_step": 11, "debug_fail_signal": 9, "debug_fail_attempt": 0}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, cifar_dir):
    """The module's 2-rank launches, independent of one another, two at a time (tests.helpers.side_by_side),
    in the order the tests read them: name -> future of (process, job folder)."""
    names = ("reference_k4", "sigkill_k4", "reference", "sigkill_sink", "midsave")
    work = {name: tmp_path_factory.mktemp(name) for name in names}  # made here, not in the threads
    with side_by_side({
        "reference_k4": lambda: _uninterrupted(work["reference_k4"], cifar_dir, train=K4),
        "sigkill_k4": lambda: _run(work["sigkill_k4"], cifar_dir, restarts=1, train={**K4, **SIGKILL_11}),
        "reference": lambda: _uninterrupted(work["reference"], cifar_dir),
        "sigkill_sink": lambda: _run(work["sigkill_sink"], cifar_dir, restarts=1,
                                     train={"sink_mode": True, "sink_size": 2, **SIGKILL_11}),
        "midsave": lambda: _kill_rank0_mid_save(work["midsave"], cifar_dir),
    }) as futures:
        yield futures


@pytest.fixture(scope="module")
def reference(jobs):
    """The uninterrupted job."""
    return jobs["reference"].result()


@pytest.fixture(scope="module")
def reference_k4(jobs):
    return jobs["reference_k4"].result()


def test_k4_ranks_end_with_one_set_of_weights_and_count_optimizer_steps(reference_k4):
    proc, job = reference_k4
    finals = _finals(proc.stdout)
    assert sorted(finals) == [0, 1] and finals[0] == finals[1] and finals[0][0] == 3 * STEPS, finals
    lines = open(os.path.join(job, "logs", "rank_0.log")).read()
    assert [s for s, _, _ in _steps(lines)] == list(range(1, 3 * STEPS + 1))  # optimizer steps, each said once
    assert re.search(r"global_step=1 loss=\S+ lr=\S+ img/s=\S+ k=4$", lines, re.M), lines[-2000:]
    names = sorted(n for n in os.listdir(os.path.join(job, "checkpoints")) if n.endswith(".ckpt"))
    assert names[-1] == FINAL and all(int(n[-14:-5]) % 2 == 0 for n in names)  # every 2 optimizer steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(job, "tensorboard", "rank_0"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 3 * STEPS + 1))
    assert {e.value for e in acc.Scalars("train/grad_accumulation")} == {4.0}


def test_k4_resume_after_sigkill_is_bit_identical(reference_k4, jobs):
    ref, ref_job = reference_k4
    proc, job = jobs["sigkill_k4"].result()
    assert proc.returncode == 0 and "after 1 restart(s)" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"resumed from \S+ckpt_e0001_s0000000(10|08)\.ckpt epoch=1 step=(4|2)$", proc.stdout, re.M)
    assert _finals(proc.stdout) == _finals(ref.stdout)
    _assert_same_state(os.path.join(job, "checkpoints", FINAL), os.path.join(ref_job, "checkpoints", FINAL))


# -- sink mode: sinks of 2 steps (sink_size 2 divides the 6 steps of an epoch) ---------------------------------

def test_sink_mode_counts_saves_and_resumes_at_sink_ends_bit_identical(reference, jobs):
    """On CPU MindSpore runs the steps one by one (it cannot sink there); the trainer's callbacks see
    one step end per sink, as on Ascend: logs, TensorBoard, checkpoints and the fault at sink ends.
    The steps are the non-sink job's, and its checkpoints (every 2 steps, where the ranks also average
    their BatchNorm statistics) fall on sink ends: the weights must be its own, through a SIGKILL."""
    ref, ref_job = reference
    proc, job = jobs["sigkill_sink"].result()
    assert proc.returncode == 0 and "after 1 restart(s)" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[localhost:0] sink mode: 2 step(s) per sink" in proc.stdout
    # the fault fires at the end of the sink holding step 11 (step 12): step 10's checkpoint is the newest
    # complete one (or step 8's, had its background write not ended when rank 0 was stopped)
    assert re.search(r"resumed from \S+ckpt_e0001_s0000000(10|08)\.ckpt epoch=1 step=(4|2)$", proc.stdout, re.M)
    first, second = open(os.path.join(job, "logs", "rank_0.log")).read().split(SEPARATOR)
    assert [s for s, _, _ in _steps(first)] == [2, 4, 6, 8, 10, 12]  # one line a sink (log_every_steps: 1)
    assert [s for s, _, _ in _steps(second)][-1] == 3 * STEPS
    assert all(s % 2 == 0 for s, _, _ in _steps(second))
    assert _finals(proc.stdout) == _finals(ref.stdout)
    _assert_same_state(os.path.join(job, "checkpoints", FINAL), os.path.join(ref_job, "checkpoints", FINAL))


def test_a_checkpoint_of_another_k_is_refused_unless_asked(single_job, tmp_path, cifar_dir):
    job = _copy_job(single_job, tmp_path)
    before = sorted(os.listdir(job / "checkpoints"))
    refused = _train(tmp_path, f"data_dir={cifar_dir}", f"output_dir={job}", "resume=auto", "epochs=3",
                     "grad_accumulation=2", "batch_size=8")
    line = _one_error_line(refused)
    assert line == (f"mscluster train: error: {job / 'checkpoints' / 'ckpt_e0002_s000000004.ckpt'}: taken with "
                    "grad_accumulation 1, the settings say 2: the steps (and so the schedule and data position) "
                    "differ; set resume_other_accumulation: true to resume it anyway"), line
    assert sorted(os.listdir(job / "checkpoints")) == before
    # asked for: 4 steps of 16 images are 4 steps of 2 x 8 (the same images a step), counted on from step 4
    allowed = _train(tmp_path, f"data_dir={cifar_dir}", f"output_dir={job}", "resume=auto", "epochs=3",
                     "grad_accumulation=2", "batch_size=8", "resume_other_accumulation=true")
    assert allowed.returncode == 0, allowed.stdout[-2000:] + allowed.stderr[-2000:]
    assert [s for s, _, _ in _steps(allowed.stdout)] == [5, 6]


@pytest.fixture(scope="module")
def rank0_killed_mid_save(jobs):
    return jobs["midsave"].result()


def _kill_rank0_mid_save(work, cifar_dir):
    """Rank 0 is SIGKILLed while its second checkpoint (global step 4) is half-written (each save pauses
    4 s half-way on the first attempt); restarts: 1."""
    _, job, argv = _launch(work, cifar_dir, restarts=1,
                           train={"debug_pause_in_save": 4.0, "debug_fail_attempt": 0})
    proc = subprocess.Popen(argv, cwd=str(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    watchdog = threading.Timer(600, kill_group, args=(proc,))
    watchdog.start()
    seen = {}
    lines = []
    try:
        pauses = 0
        for line in proc.stdout:
            lines.append(line)
            match = re.match(r"^\[localhost:0\] .*debug_pause_in_save: pausing .* with (\S+) half-written", line)
            if match:
                pauses += 1
                if pauses == 2:
                    torn = match.group(1)
                    previous = os.path.join(job, "checkpoints", "ckpt_e0000_s000000002.ckpt")
                    seen["previous_sha"] = _sha(previous)
                    victim = _worker(job, 0)
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(30)
                    seen["torn"] = torn
                    seen["torn_size"] = os.path.getsize(torn)
                    seen["previous_size"] = os.path.getsize(previous)
        proc.wait(60)
        stderr = proc.stderr.read()
    finally:
        watchdog.cancel()
        kill_group(proc)
    return proc, "".join(lines), stderr, job, seen


def _worker(job: str, rank: int):
    for p in job_processes(job):
        env = p.environ()
        if env.get("MS_ROLE") == "MS_WORKER" and env.get("RANK_ID") == str(rank):
            return p
    raise AssertionError(f"no live rank {rank} of {job}")


def test_kill_mid_save_keeps_the_previous_checkpoint_and_the_job_completes(rank0_killed_mid_save, reference):
    proc, out, err, job, seen = rank0_killed_mid_save
    assert "torn" in seen, "rank 0 never paused twice:\n" + out[-3000:]
    # the kill left a torn temporary: half of a checkpoint of the same size as the previous one
    assert os.path.basename(seen["torn"]).startswith(".tmp-ckpt_e0000_s000000004.")
    assert seen["torn_size"] < seen["previous_size"]
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    result = json.load(open(os.path.join(job, "result.json")))
    root = result["attempts"][0]["root_cause"]
    assert (result["status"], root["rank"], root["signal"]) == ("succeeded", 0, "SIGKILL")
    # both ranks resumed from the previous checkpoint, which is byte-for-byte what it was
    resumed = re.findall(r"^\[localhost:\d\] resumed from (\S+) epoch=0 step=2$", out, re.M)
    assert [os.path.basename(r) for r in resumed] == ["ckpt_e0000_s000000002.ckpt"] * 2, out[-3000:]
    assert _sha(resumed[0]) == seen["previous_sha"]
    # the torn file was never loaded, and the first complete save of the new attempt removed it
    assert ".tmp-" not in "".join(re.findall(r"resumed from \S+", out))
    assert not os.path.exists(seen["torn"])
    assert not [n for n in os.listdir(os.path.join(job, "checkpoints")) if n.startswith(".tmp-")]
    # and the job still trained exactly the uninterrupted model
    ref, ref_job = reference
    assert _finals(out) == _finals(ref.stdout)
    _assert_same_state(os.path.join(job, "checkpoints", FINAL), os.path.join(ref_job, "checkpoints", FINAL))
    assert job_processes(job) == []


def test_schedule_and_losses_continue_at_the_exact_step(reference, rank0_killed_mid_save):
    ref, ref_job = reference
    proc, out, err, job, seen = rank0_killed_mid_save
    for rank in (0, 1):
        want = _steps(open(os.path.join(ref_job, "logs", f"rank_{rank}.log")).read())
        assert [s for s, _, _ in want] == list(range(1, 3 * STEPS + 1))
        first, second = open(os.path.join(job, "logs", f"rank_{rank}.log")).read().split(SEPARATOR)
        before, after = _steps(first), _steps(second)
        assert len(before) >= 3 and before == want[:len(before)]
        assert after[0][0] == 3  # the step after the checkpoint it resumed from (step 2's)
        # loss and learning rate at every later step, printed to 4 and 5 digits, as uninterrupted
        assert after == want[2:], f"rank {rank}"
    for loss in (float(l) for _, l, _ in _steps(open(os.path.join(job, "logs", "rank_0.log")).read())):
        assert np.isfinite(loss)


def test_tensorboard_has_each_step_once_after_the_restart(reference, rank0_killed_mid_save):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def losses(job):
        acc = EventAccumulator(os.path.join(job, "tensorboard", "rank_0"), size_guidance={"scalars": 0})
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars("train/loss")]

    ref, ref_job = reference
    job = rank0_killed_mid_save[3]
    want = losses(ref_job)
    assert [s for s, _ in want] == list(range(1, 3 * STEPS + 1))
    assert losses(job) == want


def test_restarts_exhausted_fail_with_the_table_and_leave_no_process(failed_job):
    """The shared failing job (tests/shared_jobs.py): rank 1 exits 3 at step 5 on both attempts; restarts: 1."""
    proc, job = failed_job, failed_job.job
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "restart 1 of 1" in proc.stdout
    assert "job failed after 1 restart(s); root cause first:" in proc.stderr
    assert re.search(r"^\s+root cause\s+\S+\s+localhost\s+1\s+1\s+exit 3\s", proc.stderr, re.M), proc.stderr
    assert "InjectedFault: debug_fail_step: rank 1 fails at step 5" in proc.stderr
    result = json.load(open(os.path.join(job, "result.json")))
    assert (result["status"], result["exit_code"], result["restarts"]) == ("failed", 1, 1)
    assert [(a["attempt"], a["ok"], a["root_cause"]["rank"], a["root_cause"]["exit_code"])
            for a in result["attempts"]] == [(0, False, 1, 3), (1, False, 1, 3)]
    causes = [f for f in result["failures"] if not f["during_teardown"]]
    assert sorted((f["attempt"], f["rank"]) for f in causes) == [(0, 1), (1, 1)]
    # the logs of both attempts are kept, the second after a separator
    log = open(os.path.join(job, "logs", "rank_1.log")).read()
    assert log.count("debug_fail_step: rank 1 fails at step 5") >= 2 and SEPARATOR in log
    assert job_processes(job) == []


# -- single-process runs against damaged and incompatible checkpoints -------------------------------

SINGLE = ["arch=resnet18", "stem=cifar", "width=8", "image_size=32", "batch_size=16", "epochs=2",
          "steps_per_epoch=2", "lr=0.02", "log_every_steps=1", "eval_every_epochs=0", "tensorboard=false"]


def _train(cwd, *pairs, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscluster_cli", "train", "--set", *SINGLE, *pairs],
                          cwd=str(cwd), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1",
                               "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})


@pytest.fixture(scope="module")
def single_job(tmp_path_factory, cifar_dir):
    """A finished single-process job with a checkpoint at the end of each of its 2 epochs."""
    work = tmp_path_factory.mktemp("single")
    proc = _train(work, f"data_dir={cifar_dir}", f"output_dir={work / 'job'}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = sorted(n for n in os.listdir(work / "job" / "checkpoints") if n.endswith(".ckpt"))
    assert names == ["ckpt_e0001_s000000002.ckpt", "ckpt_e0002_s000000004.ckpt"]
    return work / "job"


def _copy_job(single_job, tmp_path):
    job = tmp_path / "job"
    shutil.copytree(single_job, job)
    return job


def _flip_a_byte(path) -> None:
    os.chmod(path, 0o600)
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x80]))


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("mscluster train: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize("damage", ["bit flip", "truncation"])
def test_damaged_checkpoint_is_skipped_by_name_then_refused_when_named(single_job, tmp_path, cifar_dir, damage):
    job = _copy_job(single_job, tmp_path)
    newest = str(job / "checkpoints" / "ckpt_e0002_s000000004.ckpt")
    if damage == "bit flip":
        _flip_a_byte(newest)
        why = "SHA-256 differs from the sidecar's (corrupt)"
    else:
        os.chmod(newest, 0o600)
        os.truncate(newest, os.path.getsize(newest) // 3)
        why = "differs from the sidecar's"

    named = _train(tmp_path, f"data_dir={cifar_dir}", f"output_dir={job}", f"resume={newest}")
    line = _one_error_line(named)
    assert line.startswith(f"mscluster train: error: resume: {newest}: ") and why in line, line

    auto = _train(tmp_path, f"data_dir={cifar_dir}", f"output_dir={job}", "resume=auto")
    assert auto.returncode == 0, auto.stdout[-2000:] + auto.stderr[-2000:]
    assert re.search(rf"WARNING .*skipping checkpoint {re.escape(newest)}: .*{re.escape(why)}", auto.stderr), auto.stderr
    assert f"resumed from {job / 'checkpoints' / 'ckpt_e0001_s000000002.ckpt'} epoch=1 step=0" in auto.stdout
    # epoch 2 was trained again, and its checkpoint written whole over the damaged one
    assert "global_step=3 " in auto.stdout and "global_step=1 " not in auto.stdout
    assert _sha(newest) == json.load(open(newest + ".json"))["sha256"]


def test_incompatible_checkpoint_is_refused_naming_the_keys_and_nothing_is_written(single_job, tmp_path, cifar_dir):
    job = _copy_job(single_job, tmp_path)
    before = {n: (_sha(os.path.join(root, n)), os.path.getmtime(os.path.join(root, n)))
              for root, _, files in os.walk(job) for n in files}
    proc = _train(tmp_path, f"data_dir={cifar_dir}", f"output_dir={job}", "resume=auto", "width=16",
                  "image_size=40", "epochs=4", "tensorboard=true")
    line = _one_error_line(proc)
    assert "ckpt_e0002_s000000004.ckpt: incompatible with the current settings: " in line, line
    assert "image_size (32 in the checkpoint, 40 now); width (8 in the checkpoint, 16 now)" in line, line
    assert "epochs" not in line  # more epochs is no incompatibility
    after = {n: (_sha(os.path.join(root, n)), os.path.getmtime(os.path.join(root, n)))
             for root, _, files in os.walk(job) for n in files}
    assert after == before
    assert not os.path.exists(job / "tensorboard")


def test_more_epochs_continue_a_finished_job(single_job, tmp_path, cifar_dir):
    job = _copy_job(single_job, tmp_path)
    proc = _train(tmp_path, f"data_dir={cifar_dir}", f"output_dir={job}", "resume=auto", "epochs=3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"resumed from {job / 'checkpoints' / 'ckpt_e0002_s000000004.ckpt'} epoch=2 step=0" in proc.stdout
    assert [s for s, _, _ in _steps(proc.stdout)] == [5, 6]
    assert re.search(r"^final rank=0 global_step=6 ", proc.stdout, re.M)


# -- the launcher does not restart what a restart cannot fix ----------------------------------------

def _failure(rank, exit_code, t, teardown=False, name=None):
    from launcher.report import RankFailure

    return RankFailure(host="h", name=name or f"rank{rank}", rank=rank, device_id=rank, exit_code=exit_code,
                       signal=None if exit_code is not None else "SIGKILL", time=t, log_path=None,
                       during_teardown=teardown)


def test_no_restart_when_the_root_cause_is_bad_input():
    from launcher.launch import restart_can_help

    # a rank refused its checkpoint or data (exit 2): every restart would meet the same error
    assert not restart_can_help([_failure(1, 2, 10.0), _failure(0, None, 11.0, teardown=True)])
    # a crash, a kill or a lost agent may be transient: restart
    assert restart_can_help([_failure(1, 1, 10.0)])
    assert restart_can_help([_failure(1, None, 10.0), _failure(0, 2, 11.0, teardown=True)])
    assert restart_can_help([_failure(None, 2, 10.0, name="agent")])
    assert restart_can_help([])


def test_ranks_that_would_start_at_different_steps_refuse(reference, tmp_path, cifar_dir):
    """Checkpoints not shared between hosts: rank 1 finds none while rank 0 finds step 18."""
    from cluster_helper import trainer_command
    from helpers import free_port

    _, ref_job = reference
    shutil.copytree(os.path.join(ref_job, "checkpoints"), tmp_path / "r0" / "checkpoints")
    (tmp_path / "r1").mkdir()
    pairs = [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in TRAIN.items() if k != "tensorboard"]
    pairs += [f"data_dir={cifar_dir}", "tensorboard=false", "resume=auto"]
    base = {**os.environ, "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": str(free_port()), "MS_WORKER_NUM": "2",
            "MS_TOPO_TIMEOUT": "60", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    roles = [({"MS_ROLE": "MS_SCHED"}, tmp_path / "r0")]
    roles += [({"MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(r), "RANK_ID": str(r)}, tmp_path / f"r{r}") for r in (0, 1)]
    procs = [subprocess.Popen(trainer_command(pairs + [f"output_dir={out}"]), cwd=str(tmp_path), env={**base, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for env, out in roles]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs[1:]]
    finally:
        for p in procs:
            kill_group(p)
    for rank, (proc, out) in enumerate(zip(procs[1:], outputs)):
        assert proc.returncode == 2, out[-3000:]
        line = f"the ranks would start at different global steps ([{3 * STEPS}, 0], by rank)"
        assert re.search(rf"^mscluster train: error: .*r{rank}/checkpoints: {re.escape(line)}", out, re.M), out[-3000:]
        assert "Traceback" not in out
