"""Feature: the benchmark scripts (bench_train.py, bench_launch.py, bench_dp.py; bench_scale.py and bench_chaos.py
on namespace hosts) run.

Description: both scripts run at once, each in its --quick mode (a tiny ResNet, a step or two) on
a narrow section, as a user would before a long run. They run concurrently to keep the test short
(a 2-rank cluster costs ~15 s to form and tear down whatever the job); the figures are not judged.
Expectation: each exits 0 and prints one JSON document holding positive throughputs / times for
what was asked.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _start(repo_root: str, script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(repo_root, "scripts", script), *args], cwd=repo_root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _json_of(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args[1]} took over {timeout} s: {err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


def test_bench_scripts_run_quick_and_print_json(repo_root):
    launch = _start(repo_root, "bench_launch.py", "--quick", "--only", "local", "--steps", "1")
    train = _start(repo_root, "bench_train.py", "--quick", "--only", "train32")
    # one process only: the 2-rank cases are launches like those bench_launch.py runs here; CI time is short
    dp = _start(repo_root, "bench_dp.py", "--quick", "--sizes", "32", "--steps", "2", "--warmup", "1",
                "--cases", "1proc")
    train_report, launch_report, dp_report = _json_of(train, 200), _json_of(launch, 200), _json_of(dp, 300)

    row32 = dp_report["sizes"]["32"]
    assert row32["1proc"]["img_per_s"] > 0 and row32["1proc"]["ranks"] == 1 and dp_report["cpu"], row32

    (row,) = train_report["train"]
    assert "error" not in row, row.get("output_tail")
    for case in ("bare", "model", "model_cifar", "model_monitor"):
        assert row[case]["img_per_s"] > 0 and row[case]["steps"] > 0
    assert row["ratio_model_over_bare"] == pytest.approx(row["model"]["img_per_s"] / row["bare"]["img_per_s"], abs=1e-3)
    assert row["isa"] == (os.environ.get("ONEDNN_MAX_CPU_ISA") or "AVX2")  # what trainer/cpu.py sets

    (run,) = launch_report["runs"]["local"]
    assert run["ok"], run.get("output_tail")
    assert 0 < run["all_ranks_first_step_s"] <= run["end_s"]
    assert launch_report["median"]["local"]["end_s"] == run["end_s"]


@pytest.mark.netns
def test_bench_scale_runs_on_two_namespace_hosts_and_prints_its_figures(repo_root):
    from netns_util import require_netns
    from sshd_util import skip_or_fail

    require_netns()
    if shutil.which("pdsh") is None:
        skip_or_fail("pdsh missing (the fan-out peer): run scripts/ci_system_deps.sh as root")
    # two hosts only: the one-host row is the same code with a list of one
    proc = _start(repo_root, "bench_scale.py", "--hosts", "2", "--log-seconds", "1", "--lines-per-s", "20")
    report = _json_of(proc, 240)
    assert report["ascend_128x8"]["ranktable_devices"] == 1024
    for n in ("2",):
        row = report["runs"][n]
        assert row["ranks"] == 8 * int(n)
        assert row["start"]["started_s"] > 0 and row["start"]["launcher_cpu_s"] > 0
        assert row["logs"]["steady_lines"] > 0 and row["logs"]["lag_p99_s"] >= 0
        assert row["teardown"]["root_cause_rank"] == 8 * (int(n) - 1)
        assert row["fanout_true_s"] > 0 and row["pdsh_true_s"] > 0, row


@pytest.mark.netns
def test_bench_chaos_kills_a_rank_on_two_namespace_hosts_and_the_weights_match_the_reference(repo_root):
    from netns_util import require_netns

    require_netns()
    # 2 hosts x 2 fake ranks, 50 steps at 5 a second, one SIGKILL 3 s after every rank's first step; the
    # fault-free reference runs side by side on 2 hosts of its own
    proc = _start(repo_root, "bench_chaos.py", "--hosts", "2", "--ranks-per-host", "2", "--minutes", "0.17",
                  "--step-rate", "5", "--ckpt-every", "5", "--first-fault", "3", "--faults", "sigkill",
                  "--max-faults", "1", "--compute-s", "0.02", "--work", "100")
    report = _json_of(proc, 240)
    (fault,) = report["faults"]
    assert fault["kind"] == "sigkill" and fault["host"] and isinstance(fault["rank"], int)
    result = fault["result"]
    assert result["outcome"] == "restarted in place" and "SIGKILL" in result["root_cause"], result
    assert 0 <= result["detected_s"] < result["first_step_s"] <= result["all_stepping_s"], result
    assert 0 <= result["steps_lost"] <= 7, result  # a checkpoint every 5 steps (other ranks may be a step or two ahead)
    assert report["run"]["status"] == report["reference"]["status"] == "succeeded"
    assert report["run"]["attempts"] == 2 and report["reference"]["attempts"] == 1
    assert 0 < report["run"]["ettr"] < report["reference"]["ettr"] <= 1
    assert report["weights_equal"] is True and report["run"]["weights"] == report["weights_expected"]
    assert report["cpu"]
