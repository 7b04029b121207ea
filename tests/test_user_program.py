"""Feature: ``mscluster launch`` runs the user's own MindSpore program (``command:`` or ``-- PROGRAM``).

Description: ``examples/mlp_digits.py`` (an MLP of its own on the digits stand-in, read with
GeneratorDataset, sharded by rank, data parallel with ``mindspore.communication``, reporting with
``mscluster.rank``) runs on 2 local ranks (on two network-namespace hosts over SSH, launched from a
venv without MindSpore: tests/test_install.py); it is made
to raise on rank 1 with ``@record`` (a plain script raises without it), and to print a line that is byte for byte an
event. A sleeping program's processes are read from ``/proc`` and compared with ``mscluster plan``.
Expectation: identical weights on every rank; its reports in ``mscluster status``; the failure
table names rank 1 with the exception (``@record``) or its exit code and stderr tail (without);
the printed event is logged, never taken; every process runs exactly the plan's argv, folder and
environment; bad input is one line, a non-zero exit, no traceback, nothing started.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from helpers import (REPO_ROOT, all_log, final_digests, job_processes, only_job_dir, run_launch, side_by_side,
                     start_launch, stop_launch, wait_for)

pytestmark = pytest.mark.integration

EXAMPLE = os.path.join(REPO_ROOT, "examples", "mlp_digits.py")


def _cluster(path, hosts=None, **fields) -> str:
    data = {"name": "u", "backend": "cpu", "workdir": os.path.join(os.path.dirname(str(path)), "runs"),
            "hosts": hosts or [{"address": "localhost", "devices": 2}], "env": {"MS_TOPO_TIMEOUT": "60"}, **fields}
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return str(path)


def _mlp(cifar_dir: str, *extra: str) -> list[str]:
    return ["python", EXAMPLE, "--data-dir", cifar_dir, "--epochs", "1", "--steps-per-epoch", "6", *extra]


def _cli(*args: str, cwd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscluster_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def mlp_jobs(tmp_path_factory, cifar_dir):
    """The example's two 2-rank jobs below, side by side (tests.helpers.side_by_side): each mostly waits on
    its cluster. The one that succeeds, and the one whose rank 1 raises (with @record)."""
    mlp, failing = tmp_path_factory.mktemp("mlp"), tmp_path_factory.mktemp("mlp_failing")
    raises = _mlp(cifar_dir, "--fail-rank", "1", "--fail-step", "2")
    with side_by_side({"mlp": lambda: _mlp_job(mlp, cifar_dir),
                       "failing": lambda: _failing_job(failing, raises)}) as futures:
        yield futures


@pytest.fixture(scope="module")
def mlp_job(mlp_jobs):
    return mlp_jobs["mlp"].result()


def _mlp_job(work, cifar_dir):
    """The example on 2 local ranks, printing a fake event line, given after -- to a shipped-style file
    with train: (the cluster file's command: starts the ranks of the failing jobs below)."""
    cluster = _cluster(work / "c.yaml", train={"epochs": 1})
    proc = run_launch(cluster, "--", *_mlp(cifar_dir, "--print-fake-event"), cwd=str(work), console=None)
    return proc, only_job_dir(str(work / "runs")), work


def _failing_job(work, command: list[str]) -> tuple[subprocess.CompletedProcess, str]:
    """A 2-rank job of ``command`` launched in ``work``: its process, and the folder of its runs."""
    cluster = _cluster(work / "c.yaml", command=command)
    return run_launch(cluster, cwd=str(work), console=None, timeout=240), str(work / "runs")


def test_user_program_trains_one_model_on_two_ranks(mlp_job):
    proc, job, _ = mlp_job
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = final_digests(job)
    assert sorted(digests) == ["localhost:0", "localhost:1"] and len(set(digests.values())) == 1, digests
    result = json.load(open(os.path.join(job, "result.json")))
    assert result["status"] == "succeeded"
    assert 0.5 <= result["eval"]["top1"] <= 1.0 and result["eval"]["epoch"] == 1  # from report_eval, rank 0
    assert job_processes(job) == []


def test_its_reports_show_in_status(mlp_job):
    _, job, work = mlp_job
    status = _cli("status", job, "--json", cwd=str(work))
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    ranks = {r["name"]: r for r in data["ranks"]}
    assert ranks["rank0"]["global_step"] == 6 and ranks["rank1"]["global_step"] == 6
    assert ranks["rank0"]["epoch"] == 1 and ranks["rank0"]["loss"] is not None
    assert ranks["rank0"]["checkpoint"].endswith("mlp_s6.ckpt") and os.path.isfile(ranks["rank0"]["checkpoint"])
    text = _cli("status", job, cwd=str(work)).stdout
    assert "state:     succeeded" in text and "epoch 1, step 6, loss" in text


def test_a_printed_line_that_looks_like_an_event_is_only_a_line(mlp_job):
    _, job, _ = mlp_job
    result = json.load(open(os.path.join(job, "result.json")))
    assert result["eval"]["epoch"] == 1 and result["eval"]["top1"] != 0.123  # not the fake epoch 99
    log = all_log(job)
    assert '[localhost:0] {"v":1,"kind":"eval","time":0.0,"epoch":99,"metrics":{"top1":0.123}}' in log


def test_the_console_shows_rank_0_and_keeps_the_rest_in_files(mlp_job):
    proc, job, _ = mlp_job
    assert "[localhost:0] eval top1=" in proc.stdout
    shown = [line for line in proc.stdout.splitlines() if line.startswith("[localhost:1] ")]
    assert all("WARNING" in line or "ERROR" in line for line in shown), shown  # rank 1: only its warnings
    assert "[localhost:1] epoch 1 done" in all_log(job) and "[INFO]" not in proc.stdout


def test_dash_dash_program_replaces_the_files_training(mlp_job):
    """A shipped-style file with train: runs the program given after -- instead (nothing of train: is used)."""
    proc, job, _ = mlp_job
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(final_digests(job)) == ["localhost:0", "localhost:1"]
    assert not [n for n in os.listdir(job) if n.startswith("train.attempt")]  # the built-in trainer never ran


# the without-record case needs no MindSpore: Python's own traceback on stderr is what the table shows
PLAIN_FAILING = """import os, sys, time
rank = int(os.environ["MS_NODE_ID"])
for step in (1, 2):
    print(f"step {step}", flush=True)
    if rank == 1 and step == 2:
        raise RuntimeError("rank 1 gives up at step 2 (asked to by --fail-rank)")
time.sleep(120)  # rank 0 waits, as in a collective, until it is stopped
"""


@pytest.mark.parametrize("record", [True, False], ids=["with-record", "without-record"])
def test_an_exception_on_rank_1_is_the_root_cause(tmp_path, mlp_jobs, record):
    if record:  # the example (MindSpore, data parallel) with @record, launched beside mlp_job
        proc, runs = mlp_jobs["failing"].result()
    else:
        (tmp_path / "plain_train.py").write_text(PLAIN_FAILING)
        proc, runs = _failing_job(tmp_path, ["python", str(tmp_path / "plain_train.py")])
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stderr
    root = next(line for line in table.splitlines() if line.strip().startswith("root cause "))
    assert root.split()[3:7] == ["localhost", "1", "1", "exit"], table
    assert "root cause (localhost, rank1):" in table
    if record:  # the error file: the exception's message, then its traceback's tail
        assert "  RuntimeError: rank 1 gives up at step 2 (asked to by --fail-rank)" in table
    else:  # no error file: the tail of rank 1's stderr, which holds Python's own traceback
        block = table.split("\nmscluster: attempt 0's failure")[0]  # the recovery line follows the table
        assert block.rstrip().endswith("  | RuntimeError: rank 1 gives up at step 2 (asked to by --fail-rank)")
    assert "| " in table and ("mlp_digits.py" if record else "plain_train.py") in table, table
    job = only_job_dir(runs)
    errors = os.listdir(os.path.join(job, "errors"))
    assert ("rank1.attempt0.json" in errors) == record
    assert job_processes(job) == []


def _proc_facts(pid: int) -> tuple[list[str], dict[str, str], str]:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        argv = [a.decode() for a in handle.read().split(b"\0")[:-1]]
    with open(f"/proc/{pid}/environ", "rb") as handle:
        env = dict(item.decode().split("=", 1) for item in handle.read().split(b"\0") if b"=" in item)
    return argv, env, os.readlink(f"/proc/{pid}/cwd")


def test_every_process_runs_exactly_what_plan_shows(tmp_path):
    from launcher.config import load_cluster
    from launcher.jobplan import build_job_plan
    from launcher.spec import AtLaunch

    sleeper = ["python", "-c", "import time; time.sleep(60)"]
    cluster = _cluster(tmp_path / "c.yaml", command=sleeper, env={"MS_TOPO_TIMEOUT": "90", "MY_SETTING": "a b'c"})
    proc = start_launch(cluster, cwd=str(tmp_path), console=None)
    try:
        job = wait_for(lambda: os.path.isdir(tmp_path / "runs") and os.listdir(tmp_path / "runs")
                       and only_job_dir(str(tmp_path / "runs")), 60, what="the job folder")

        def started():
            found = [p for p in job_processes(job) if "MSCLUSTER_ERROR_FILE" in p.environ()]  # not the agent
            return found if len(found) == 3 else None

        running = {p.environ()["MSCLUSTER_ERROR_FILE"]: p.pid for p in wait_for(started, 60, what="3 processes")}
        agents = [p for p in job_processes(job) if "MSCLUSTER_ERROR_FILE" not in p.environ()]
        assert len(agents) == 1 and len(os.listdir(f"/proc/{agents[0].pid}/task")) == 1  # no threads: preexec_fn is safe
        facts = {path: _proc_facts(pid) for path, pid in running.items()}
        port = int(next(iter(facts.values()))[1]["MS_SCHED_PORT"])
        plan = build_job_plan(load_cluster(cluster), job_dir=job,
                              scheduler_port=port, launch_dir=str(tmp_path))
        assert not plan.preview
        for host, spec in plan.processes():
            argv, env, cwd = facts[spec.error_file]
            assert argv == list(spec.argv), spec.name
            assert cwd == spec.cwd, spec.name
            for key, value in spec.env:
                if value is AtLaunch.EVENT_FD:
                    assert env[key].isdigit(), (spec.name, key)
                else:
                    assert env.get(key) == value, (spec.name, key, env.get(key), value)
        # what plan prints is that plan, with the launch-time values left as placeholders
        shown = _cli("plan", cluster, cwd=str(tmp_path)).stdout
        assert "MY_SETTING='a b'\"'\"'c'" in shown and "MSCLUSTER_RESTART_COUNT=0" in shown
    finally:
        stop_launch(proc)
    assert job_processes(job) == []


def test_an_exit_is_seen_even_when_a_child_keeps_the_output_open(tmp_path):
    """waitpid, not EOF: the rank exits 3 while a child it started still holds its stdout and stderr."""
    code = "import subprocess, sys; subprocess.Popen(['sleep', '120']); print('bye', flush=True); sys.exit(3)"
    cluster = _cluster(tmp_path / "c.yaml", command=["python", "-c", code], hosts=[{"address": "localhost", "devices": 1}])
    t0 = time.monotonic()
    proc = run_launch(cluster, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    root = next(line for line in proc.stderr.splitlines() if line.strip().startswith("root cause "))
    assert root.split()[3:7] == ["localhost", "0", "0", "exit"] and root.split()[7] == "3", proc.stderr
    job = only_job_dir(str(tmp_path / "runs"))
    assert job_processes(job) == []  # the sleeping child went with its rank's process group


CRASH_AT_EXIT = """
import atexit, os, signal, sys
from mscluster.rank import record

@record
def main():
    print('work done', flush=True)
    if sys.argv[1] == 'before':
        os.kill(os.getpid(), signal.SIGSEGV)  # dies in the middle of its work

atexit.register(lambda: os.kill(os.getpid(), signal.SIGSEGV))  # as MindSpore's teardown did, now and then
main()
"""


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_crash_after_the_entry_point_returned_is_not_the_jobs_failure(tmp_path, when):
    """record() says the rank finished; a SIGSEGV after that (a framework's teardown) is a warning."""
    (tmp_path / "crash.py").write_text(CRASH_AT_EXIT)
    # ascend from a rank table: no scheduler waiting for a MindSpore that this program never starts
    cluster = _cluster(tmp_path / "c.yaml", command=["python", str(tmp_path / "crash.py"), when], backend="ascend",
                       ascend={"init": "ranktable"}, python=sys.executable,
                       hosts=[{"address": "localhost", "devices": 2, "device_ips": {0: "10.9.0.1", 1: "10.9.0.2"}}])
    proc = run_launch(cluster, "--skip-preflight", cwd=str(tmp_path), timeout=120)
    job = only_job_dir(str(tmp_path / "runs"))
    result = json.load(open(os.path.join(job, "result.json")))
    if when == "after":
        assert proc.returncode == 0 and result["status"] == "succeeded", proc.stdout[-2000:] + proc.stderr[-2000:]
        assert re.search(r"rank0 on localhost ended by signal SIGSEGV after it reported its work finished "
                         r"\(a crash in the teardown at exit\): not counted as a failure", proc.stdout + proc.stderr)
        status = json.load(open(os.path.join(job, "status.json")))
        assert {p["state"] for name, p in status["processes"].items() if name.startswith("rank")} == {"succeeded"}
    else:
        assert proc.returncode == 1 and result["status"] == "failed"
        assert "SIGSEGV" in proc.stderr
    assert job_processes(job) == []


@pytest.mark.parametrize("fields, message", [
    ({"command": "python train.py"}, ": command: expected a list of strings"),
    ({"command": []}, "command: is empty"),
    ({"command": ["python", {"a": 1}]}, "command[1]: expected a string, got a mapping"),
    ({"command": ["python", "x.py"], "train": {"epochs": 1}}, "command: and train: exclude each other"),
    ({"cwd": "/tmp"}, "cwd: only used with command:"),
    ({"command": ["python", "x.py"], "console": [5]}, "console[0]: expected a rank 0..1, got 5"),
])
def test_bad_command_fields_are_one_line(tmp_path, fields, message):
    cluster = _cluster(tmp_path / "c.yaml", **fields)
    for verb in ("plan", "launch"):
        proc = _cli(verb, cluster, cwd=str(tmp_path))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("command, cwd, missing", [
    (["python", "nope.py"], None, "no script {cwd}/nope.py"),
    (["python", "-m", "no_such_module_here"], None, "no module no_such_module_here"),
    (["./not-there.sh"], None, "no program {cwd}/./not-there.sh"),
    (["no-such-program-xyz", "--x"], None, "no program no-such-program-xyz (not on PATH)"),
    (["python", "-c", "pass"], "/nonexistent/folder", "no folder /nonexistent/folder (cwd)"),
])
def test_a_missing_program_or_folder_names_host_and_path_and_starts_nothing(tmp_path, command, cwd, missing):
    fields = {"command": command, **({"cwd": cwd} if cwd else {})}
    cluster = _cluster(tmp_path / "c.yaml", **fields)
    proc = _cli("launch", cluster, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("mscluster launch: error: host localhost: ")
    assert missing.format(cwd=tmp_path) in lines[0] and lines[0].endswith("nothing was started")
    assert not os.path.exists(tmp_path / "runs")


def test_nothing_after_dash_dash_is_one_line(tmp_path):
    cluster = _cluster(tmp_path / "c.yaml", command=["python", "x.py"])
    proc = _cli("launch", cluster, "--", cwd=str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"mscluster launch: error: {cluster}: nothing after --: give the program every rank runs, e.g. "
        "-- python train.py"]
