"""Feature: mscluster's own processes import mscluster's modules, whatever the folder they run in holds.

Description: the pre-flight's probe, the agent, the dynamic cluster's scheduler and the built-in
trainer's ranks run in the launch folder (or a remote login folder), where a training project often
has a ``launcher.py`` or a ``trainer.py`` of its own. ``python -m`` would import those (the folder
comes first on sys.path); mscluster starts its own modules with ``launcher.jobplan.own_argv``. Here
the user's files raise SystemExit("user file imported") at import. A 2-rank built-in-trainer job
(backend cpu: the scheduler too; the session's shared succeeded job) is launched from such a folder
with the ``mscluster`` command;
the pre-flight's MindSpore comparison is checked through the executor seam.
Expectation: ``own_argv`` behaves as ``-m`` (argv, ``__main__``, PYTHONPATH kept) but never
imports the folder's files; the job succeeds; hosts with different MindSpore versions are one line
naming which host has which, and nothing starts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import all_log, user_folder
from launcher.config import parse_cluster
from launcher.errors import MindSporeMismatch
from launcher.executor import LocalExecutor, RunResult, check_host
from launcher.jobplan import own_argv
from launcher.launch import preflight

ARGV_MODULE = """import json, os, sys
print(json.dumps({"name": __name__, "argv0": sys.argv[0], "args": sys.argv[1:],
                  "lib_on_path": os.environ["LIB"] in sys.path, "cwd_on_path": "" in sys.path or os.getcwd() in sys.path}))
"""


def test_own_argv_runs_a_module_as_dash_m_does_but_not_from_the_folder(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "argvmod.py").write_text(ARGV_MODULE)
    folder = user_folder(str(tmp_path / "work"))
    env = {**os.environ, "PYTHONPATH": str(lib), "LIB": str(lib)}  # CANN's environment lives in PYTHONPATH

    def run(argv):
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    ours = run(own_argv(sys.executable, "argvmod", "--x", "1", "two words"))
    dash_m = run([sys.executable, "-m", "argvmod", "--x", "1", "two words"])
    assert ours["name"] == dash_m["name"] == "__main__"
    assert ours["argv0"] == dash_m["argv0"] == str(lib / "argvmod.py")
    assert ours["args"] == dash_m["args"] == ["--x", "1", "two words"]
    assert ours["lib_on_path"] and dash_m["lib_on_path"]
    assert dash_m["cwd_on_path"] and not ours["cwd_on_path"]  # the folder's files are never ours


def test_the_probe_ignores_the_users_launcher_py(tmp_path):
    folder = user_folder(str(tmp_path / "work"))
    request = '{"free_port": true}'
    shadowed = subprocess.run([sys.executable, "-m", "launcher.probe"], cwd=folder, input=request,
                              capture_output=True, text=True, timeout=60)
    assert "user file imported" in shadowed.stderr  # what -m did (issue 20): the user's file ran
    done = subprocess.run(own_argv(sys.executable, "launcher.probe"), cwd=folder, input=request,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and 1024 <= int(done.stdout) <= 65535, done.stderr
    # the pre-flight's check from that folder: passes, and names this interpreter's MindSpore
    import importlib.metadata

    version = check_host(LocalExecutor(), sys.executable, timeout=30, cwd=folder, needs_mindspore=True)
    assert version == importlib.metadata.version("mindspore")


class _Answering:
    """A host's executor that answers the pre-flight's probe with a given MindSpore version."""

    def __init__(self, host: str, version: str) -> None:
        self.host, self.version, self.asked = host, version, []

    def run(self, argv, *, timeout, env={}, cwd=None, input=""):
        self.asked.append(list(argv))
        return RunResult(0, json.dumps({"mindspore": self.version}) + "\n", "")

    def close(self) -> None:
        pass


def _three_hosts(versions):
    hosts = ", ".join(f"{{address: 10.0.0.{i + 1}, devices: 1}}" for i in range(len(versions)))
    cluster = parse_cluster(f"name: t\nbackend: cpu\npython: /opt/py\nhosts: [{hosts}]\ntrain: {{data_dir: /d}}\n",
                            "t.yaml")
    return cluster, {f"10.0.0.{i + 1}": _Answering(f"10.0.0.{i + 1}", v) for i, v in enumerate(versions)}


def test_preflight_names_each_hosts_mindspore():
    cluster, executors = _three_hosts(["2.10.0", "2.10.0", "2.10.0"])
    assert preflight(cluster, executors, "/launch") == {"10.0.0.1": "2.10.0", "10.0.0.2": "2.10.0",
                                                        "10.0.0.3": "2.10.0"}
    assert executors["10.0.0.2"].asked == [list(own_argv("/opt/py", "launcher.probe"))]


def test_preflight_refuses_hosts_with_different_mindspore_versions():
    cluster, executors = _three_hosts(["2.10.0", "2.6.0", "2.10.0"])
    with pytest.raises(MindSporeMismatch) as info:
        preflight(cluster, executors, "/launch")
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 3
    assert message.startswith("the hosts have different MindSpore versions: "
                              "2.10.0 on 10.0.0.1, 10.0.0.3; 2.6.0 on 10.0.0.2: ")
    assert "CANN" in message and message.endswith("nothing was started")


@pytest.mark.integration
def test_builtin_trainer_job_runs_from_a_folder_with_the_users_launcher_and_trainer(succeeded_job):
    """backend cpu: the probe, the agent, the scheduler and both ranks all run in this folder (the session's
    shared job, tests/shared_jobs.py, is launched so: any of them importing a user's file would fail it)."""
    assert succeeded_job.returncode == 0, succeeded_job.output[-3000:]
    assert "user file imported" not in succeeded_job.output
    assert json.load(open(os.path.join(succeeded_job.job, "result.json")))["status"] == "succeeded"
    assert "user file imported" not in all_log(succeeded_job.job)  # every process's lines, rank 1's too
