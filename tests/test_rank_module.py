"""Feature: ``mscluster.rank``, the module a rank program imports, and the boundaries between packages.

Description: real processes with a real pipe as the event channel (as the agent gives one), the
error file written by ``@record``, ``rank_info`` from each kind of environment; and imports with
MindSpore made unimportable, as on a launch node that lacks it.
Expectation: events arrive typed and whole on the pipe and never on stdout; outside a launch the
functions do nothing; an exception leaves its type, message and traceback; ``launcher.*`` and
``mscluster_cli.*`` import without MindSpore, and ``mscluster.rank`` imports neither it nor the
launcher; no module of ``trainer/`` imports ``launcher/``.
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

from helpers import REPO_ROOT
from mscluster import events
from mscluster.errors import RankEnvError
from mscluster.rank import DYNAMIC_CLUSTER, HCCL, SINGLE, rank_info


def _run(code: str, env: dict, pass_fds=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, pass_fds=pass_fds, cwd=REPO_ROOT)


def test_reports_travel_typed_on_their_own_pipe_not_stdout():
    read_end, write_end = os.pipe()
    code = ("from mscluster.rank import report, report_eval, report_checkpoint\n"
            "report(3, epoch=1, loss=0.5, img_per_s=10)\n"
            "report_eval(1, top1=0.75)\n"
            "report_checkpoint('/c/x.ckpt', 3)\n"
            "print('done')\n")
    proc = _run(code, {"MSCLUSTER_EVENT_FD": str(write_end)}, pass_fds=(write_end,))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        got = [events.decode(line) for line in pipe.read().splitlines()]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert [type(e) for e in got] == [events.Progress, events.Eval, events.Checkpoint]
    assert (got[0].step, got[0].epoch, got[0].loss, dict(got[0].scalars)) == (3, 1, 0.5, {"img_per_s": 10.0})
    assert dict(got[1].metrics) == {"top1": 0.75} and (got[2].path, got[2].step) == ("/c/x.ckpt", 3)


def test_outside_a_launch_reports_do_nothing_and_rank_info_is_rank_0_of_1():
    code = ("from mscluster.rank import report, rank_info\nreport(1, loss=2.0)\n"
            "i = rank_info(); print(i.rank, i.world_size, i.backend, i.job_dir)\n")
    proc = _run(code, {"MSCLUSTER_EVENT_FD": ""})
    assert proc.returncode == 0 and proc.stdout.split() == ["0", "1", "single", "None"], proc.stderr


def test_a_vanished_launcher_does_not_break_the_program():
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: writes fail with EPIPE
    proc = _run("import signal; signal.signal(signal.SIGPIPE, signal.SIG_IGN)\n"
                "from mscluster.rank import report\nfor i in range(3): report(i)\nprint('alive')",
                {"MSCLUSTER_EVENT_FD": str(write_end)}, pass_fds=(write_end,))
    os.close(write_end)
    assert proc.returncode == 0 and proc.stdout == "alive\n", proc.stderr


def test_record_writes_the_error_file_and_reraises(tmp_path):
    path = tmp_path / "errors" / "rank1.attempt0.json"
    code = ("from mscluster.rank import record\n"
            "@record\ndef main():\n    raise KeyError('no such layer')\n"
            "main()\n")
    proc = _run(code, {"MSCLUSTER_ERROR_FILE": str(path)})
    assert proc.returncode == 1 and "KeyError" in proc.stderr  # the exception still propagates
    data = json.loads(path.read_text())
    assert data["type"] == "KeyError" and data["message"] == "KeyError: 'no such layer'"
    assert 'line 4, in main' in data["traceback"] and data["exit_code"] == 1
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    ok = _run("from mscluster.rank import record\nrecord(lambda: None)()\n",
              {"MSCLUSTER_ERROR_FILE": str(tmp_path / "none.json")})
    assert ok.returncode == 0 and not (tmp_path / "none.json").exists()


def test_rank_info_reads_each_kind_of_environment():
    dyn = rank_info({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "4", "MS_NODE_ID": "2", "LOCAL_RANK": "0",
                     "MSCLUSTER_JOB_DIR": "/runs/j", "MSCLUSTER_RESTART_COUNT": "1", "MSCLUSTER_HOST": "10.0.0.3"})
    assert (dyn.rank, dyn.world_size, dyn.backend, dyn.host, dyn.restart_count) == (2, 4, DYNAMIC_CLUSTER, "10.0.0.3", 1)
    assert dyn.job_dir == "/runs/j" and dyn.checkpoint_dir == "/runs/j/checkpoints" and dyn.distributed
    hccl = rank_info({"RANK_TABLE_FILE": "/t.json", "RANK_ID": "9", "RANK_SIZE": "16", "DEVICE_ID": "1",
                      "LOCAL_RANK": "1"})
    assert (hccl.rank, hccl.device_id, hccl.local_rank, hccl.backend, hccl.device_target) == (9, 1, 1, HCCL, "Ascend")
    sched = rank_info({"MS_ROLE": "MS_SCHED", "MS_WORKER_NUM": "2"})
    assert sched.is_scheduler and rank_info({}).backend == SINGLE
    with pytest.raises(RankEnvError, match=r"rank 5 \(MS_NODE_ID, or MS_NODE_RANK x MS_LOCAL_WORKER \+ LOCAL_RANK\) must be < MS_WORKER_NUM=2"):
        rank_info({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2", "MS_NODE_ID": "5"})
    with pytest.raises(RankEnvError, match="RANK_ID='x' is not an integer"):
        rank_info({"RANK_TABLE_FILE": "/t.json", "RANK_ID": "x", "RANK_SIZE": "2"})


BLOCK_MINDSPORE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mindspore" or name.startswith("mindspore."):
            raise ImportError("mindspore is not installed on this launch node")
sys.meta_path.insert(0, Block())
"""


def test_launcher_and_cli_import_without_mindspore_and_rank_imports_neither():
    modules = sorted(".".join(p.relative_to(REPO_ROOT).with_suffix("").parts)
                     for package in ("launcher", "mscluster_cli") for p in pathlib.Path(REPO_ROOT, package).rglob("*.py")
                     if p.stem not in ("__init__", "__main__"))
    code = BLOCK_MINDSPORE + (
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "import mscluster_cli.main\n"
        "assert mscluster_cli.main.main(['plan', 'cluster_configs/local_cpu.yaml']) == 0\n")
    proc = _run(code, {})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank 0" in proc.stdout
    proc = _run("import sys, mscluster.rank\n"
                "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mindspore', 'launcher', 'trainer')))", {})
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_no_module_of_trainer_imports_launcher():
    offenders = []
    for path in pathlib.Path(REPO_ROOT, "trainer").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "launcher"]
    assert offenders == []
