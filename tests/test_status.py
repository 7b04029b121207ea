"""Feature: ``mscluster status`` and ``mscluster logs`` read a job's state and logs from its folder.

Description: the launcher's StatusWriter is fed the typed agent messages of a job (the ranks'
events among them, as ``mscluster.rank.report*`` sends them) and writes a real status.json; read_status answers from that file, result.json and
whether the launcher process lives; the logs reader follows a file another thread writes.
(The same commands against real launched jobs are in test_monitoring.py.)
Expectation: the right state at every stage (running, restarting, succeeded, failed, launcher
gone), the progress and eval the ranks printed, one clear line for a folder that is not a job.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from launcher.errors import JobDirError
from launcher.joblogs import follow, log_path
from launcher.protocol import AgentSpec, Exited, Output, ProcessSpec, Relayed, Started
from launcher.status import STATUS_FILE, StatusWriter, format_status, read_status
from mscluster import events


def _specs() -> dict[str, AgentSpec]:
    procs = (ProcessSpec("scheduler", ("x",), ()),
             ProcessSpec("rank0", ("x",), (), rank=0, device_id=0),
             ProcessSpec("rank1", ("x",), (), rank=1, device_id=1, local_rank=1, local_size=2))
    return {"localhost": AgentSpec(host="localhost", job_dir="/unused", processes=procs)}


def _started(writer: StatusWriter) -> None:
    for pid, name in enumerate(("scheduler", "rank0", "rank1"), start=100):
        writer.on_message("localhost", Started(name=name, pid=pid))


def _progress(writer: StatusWriter, name: str, epoch: int, epochs: int, step: int, steps: int, global_step: int,
              loss: float, img_per_s: float) -> None:
    """What the built-in trainer's StepMonitor reports after a step."""
    ev = events.Progress(step=global_step, time=time.time(), epoch=epoch, loss=loss,
                         scalars={"epochs": epochs, "step_in_epoch": step, "steps_per_epoch": steps,
                                  "img_per_s": img_per_s, "lr": 0.1})
    writer.on_message("localhost", Relayed(name=name, event=ev))


def _eval(writer: StatusWriter, name: str, epoch: int, top1: float, loss: float) -> None:
    writer.on_message("localhost", Relayed(name=name, event=events.Eval(epoch, time.time(), {"top1": top1, "loss": loss})))


def _exit(writer: StatusWriter, name: str, code, stopping=False, sig=None) -> None:
    writer.on_message("localhost", Exited(name=name, rank=None, code=code, signal=sig, time=time.time()),
                      stopping=stopping)


def test_printed_lines_change_nothing_events_do(tmp_path):
    writer = StatusWriter(str(tmp_path), _specs(), attempt=0)
    _started(writer)
    for line in ("epoch=1/2 step=4/4 global_step=4 loss=2.2500 lr=0.1 img/s=300.0",
                 "eval epoch=1 top1=0.4200 loss=1.9000",
                 events.encode(events.Eval(1, 1.0, {"top1": 0.99}))):  # byte for byte an event: still a line
        writer.on_message("localhost", Output(name="rank0", line=line))
    status = read_status(str(tmp_path))
    assert status.lead.global_step is None and status.eval == {}
    _progress(writer, "rank0", 1, 2, 4, 4, 4, 2.25, 300.0)
    assert read_status(str(tmp_path)).lead.global_step == 4


def test_a_program_reporting_plain_steps_shows_them(tmp_path):
    writer = StatusWriter(str(tmp_path), _specs(), attempt=0)
    _started(writer)
    writer.on_message("localhost", Relayed(name="rank0", event=events.Progress(step=17, time=time.time(), loss=0.5)))
    writer.on_message("localhost", Relayed(name="rank0", event=events.Checkpoint("/c/s17.ckpt", 17, time.time())))
    _eval(writer, "rank0", 2, 0.8125, 0.4)
    status = read_status(str(tmp_path))
    text = format_status(status)
    assert "progress:  step 17, loss 0.5000" in text
    assert "last eval: epoch 2, top1 0.8125, loss 0.4000" in text
    assert status.lead.checkpoint == "/c/s17.ckpt"


def test_running_job_shows_progress_eval_and_each_rank(tmp_path):
    writer = StatusWriter(str(tmp_path), _specs(), attempt=0)
    status = read_status(str(tmp_path))
    assert status.state == "running" and status.attempt == 0
    assert [r.state for r in status.ranks] == ["pending", "pending", "pending"]
    assert "no step reported yet" in format_status(status)

    _started(writer)
    _progress(writer, "rank0", 1, 2, 4, 4, 4, 2.25, 300.0)
    _progress(writer, "rank1", 1, 2, 3, 4, 3, 2.5, 300.0)
    _eval(writer, "rank0", 1, 0.42, 1.9)
    status = read_status(str(tmp_path))
    assert status.state == "running"
    lead = status.lead
    assert (lead.epoch, lead.step, lead.global_step, lead.loss) == (1, 4, 4, 2.25)
    assert status.eval == {"epoch": 1, "top1": 0.42, "loss": 1.9}
    assert [(r.name, r.state, r.pid) for r in status.ranks] == [
        ("rank0", "running", 101), ("rank1", "running", 102), ("scheduler", "running", 100)]
    text = format_status(status)
    assert "running (attempt 1)" in text
    assert "epoch 1/2, step 4/4 (global step 4), loss 2.2500" in text
    assert "top1 0.4200" in text
    assert any(line.split()[:3] == ["1", "localhost", "running"] for line in text.splitlines())
    # the file is always whole JSON (written by rename)
    json.load(open(tmp_path / STATUS_FILE))


def test_failed_rank_then_restart_then_final_result(tmp_path):
    writer = StatusWriter(str(tmp_path), _specs(), attempt=0)
    _started(writer)
    _eval(writer, "rank0", 1, 0.3, 2.0)
    _exit(writer, "rank1", 3)
    _exit(writer, "rank0", None, stopping=True, sig="SIGTERM")
    writer.attempt_ended(ok=False, interrupted=False)
    status = read_status(str(tmp_path))
    # this process is the launcher and it lives: a restart is coming
    assert status.state == "running" and "restarting after attempt 1 failed" in status.detail
    states = {r.name: (r.state, r.exit_code, r.signal) for r in status.ranks}
    assert states["rank1"] == ("failed", 3, None)
    assert states["rank0"] == ("stopped", None, "SIGTERM")
    assert states["scheduler"][0] == "stopped"

    writer = StatusWriter(str(tmp_path), _specs(), attempt=1)  # the next attempt keeps the last eval
    status = read_status(str(tmp_path))
    assert status.attempt == 1 and status.state == "running" and status.eval["top1"] == 0.3

    (tmp_path / "cluster.yaml").write_text("name: t\nrestarts: 1\n")
    (tmp_path / "result.json").write_text(json.dumps({
        "status": "failed", "exit_code": 1, "restarts": 1, "eval": {"epoch": 1, "top1": 0.3, "loss": 2.0},
        "attempts": [{"attempt": 1, "ok": False, "root_cause": {
            "host": "localhost", "name": "rank1", "rank": 1, "exit_code": 3, "signal": None,
            "message": "InjectedFault: rank 1 fails"}}]}))
    status = read_status(str(tmp_path))
    assert status.state == "failed" and status.attempt == 1 and status.max_attempts == 2
    text = format_status(status)
    assert "failed (attempt 2 of 2)" in text
    assert "root cause: rank1 on localhost (exit 3): InjectedFault: rank 1 fails" in text


def test_launcher_that_died_is_reported_failed(tmp_path):
    StatusWriter(str(tmp_path), _specs(), attempt=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    data = json.load(open(tmp_path / STATUS_FILE))
    data["launcher"]["pid"] = int(dead.stdout)
    (tmp_path / STATUS_FILE).write_text(json.dumps(data))
    status = read_status(str(tmp_path))
    assert status.state == "failed"
    assert f"the launcher (pid {int(dead.stdout)}" in status.detail and "is gone" in status.detail


def test_result_of_an_earlier_launch_is_not_taken_for_the_running_one(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"status": "succeeded", "restarts": 0, "eval": {}}))
    old = time.time() - 60
    os.utime(tmp_path / "result.json", (old, old))
    StatusWriter(str(tmp_path), _specs(), attempt=0)  # a resumed launch in the same folder
    assert read_status(str(tmp_path)).state == "running"


def test_not_a_job_folder_is_one_clear_line(tmp_path):
    with pytest.raises(JobDirError, match="not a job folder"):
        read_status(str(tmp_path))
    with pytest.raises(JobDirError, match="no such job folder"):
        read_status(str(tmp_path / "nope"))
    proc = subprocess.run([sys.executable, "-m", "mscluster_cli", "status", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"mscluster status: error: {tmp_path / 'nope'}: no such job folder"]


def test_logs_of_a_missing_rank_name_the_ranks_there(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "rank_0.log").write_text("hello\n")
    (tmp_path / "status.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "mscluster_cli", "logs", str(tmp_path), "--rank", "7"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "rank_7.log: no such log (logs exist for rank(s) 0)" in proc.stderr
    assert log_path(str(tmp_path)).endswith(os.path.join("logs", "all.log"))


def test_follow_yields_whole_lines_as_written_until_the_job_ends(tmp_path):
    path = tmp_path / "all.log"
    ended = threading.Event()

    def writer():
        time.sleep(0.2)  # the file does not exist when following starts
        with open(path, "w") as handle:
            for i in range(5):
                handle.write(f"line {i} part")  # a line arrives in two writes
                handle.flush()
                time.sleep(0.05)
                handle.write(" two\n")
                handle.flush()
            handle.write("last line without newline")
        ended.set()

    thread = threading.Thread(target=writer)
    thread.start()
    lines = list(follow(str(path), done=ended.is_set, poll_s=0.02))
    thread.join()
    assert lines == [f"line {i} part two" for i in range(5)] + ["last line without newline"]


def test_a_flood_of_events_rewrites_the_file_at_most_every_interval_and_loses_no_change(tmp_path):
    now = [1000.0]
    writer = StatusWriter(str(tmp_path), _specs(), attempt=0, every=0.5, monotonic=lambda: now[0])
    _started(writer)  # within the interval after the first write: not yet in the file
    assert [r.state for r in read_status(str(tmp_path)).ranks] == ["pending"] * 3
    mtimes = set()
    for step in range(1, 1001):  # 1000 events in the same instant: no rewrite
        _progress(writer, "rank1", 1, 2, step, 1000, step, 1.0, 300.0)
        mtimes.add(os.stat(tmp_path / STATUS_FILE).st_mtime_ns)
    assert len(mtimes) == 1 and read_status(str(tmp_path)).lead.global_step is None
    now[0] += 0.5
    writer.flush()  # the supervisor's loop, every turn: the latest state, once
    status = read_status(str(tmp_path))
    assert [r.state for r in status.ranks] == ["running"] * 3
    assert {r.name: r.global_step for r in status.ranks}["rank1"] == 1000
    _exit(writer, "rank1", 3)
    writer.attempt_ended(ok=False, interrupted=False)  # the end is written at once, whatever the interval
    assert {r.name: r.state for r in read_status(str(tmp_path)).ranks}["rank1"] == "failed"


def test_status_shows_the_watchdog_limits_in_force(tmp_path):
    from launcher.spec import WatchdogSpec
    from launcher.stall import StallWatch

    writer = StatusWriter(str(tmp_path), _specs(), attempt=0)
    _started(writer)
    watch = StallWatch(WatchdogSpec(), [("localhost", "rank0", 0)])
    watch.learned.section("checkpoint", 20.0)
    writer.set_watchdog(watch.in_force())
    writer.flush()
    text = format_status(read_status(str(tmp_path)))
    assert ("watchdog:  stall_timeout auto: startup 900 s, step 600 s, checkpoint 600 s; frozen after 16 s "
            "without a beat") in text  # too few steps timed: the first limits
