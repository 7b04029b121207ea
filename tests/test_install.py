"""Feature: ``pip install mscluster`` gives a working launcher without MindSpore, and never touches MindSpore.

Description: a fresh venv (Python 3.13 where on PATH, as on a login node; else this venv's base) gets
``pip install <a copy of the repository>``, a plain install from the package's own metadata, once
for the module. With that venv's ``mscluster``: ``plan`` of every shipped cluster file, then a
``launch`` of a 2-host job on network-namespace hosts whose ``python:`` (this test's interpreter)
has MindSpore, from a folder that holds a user's ``launcher.py`` and ``trainer.py`` (backend cpu:
the scheduler runs there on the first host, the ranks run ``examples/mlp_digits.py`` there).
Expectation: no MindSpore in the venv and no unconditional MindSpore requirement in the installed
metadata (only the ``mindspore`` extra names it); every cluster file's plan exits 0; the job
succeeds and ``mscluster status`` of that venv reads it.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from helpers import REPO_ROOT, final_digests, job_processes, only_job_dir, user_folder

pytestmark = pytest.mark.integration


def _login_python() -> str:
    """$MSCLUSTER_LOGIN_PYTHON, else Python 3.13 when on PATH (a login node's), else this venv's base Python."""
    for found in (os.environ.get("MSCLUSTER_LOGIN_PYTHON"), shutil.which("python3.13")):
        if found and subprocess.run([found, "-c", "import venv"], capture_output=True).returncode == 0:
            return found
    return getattr(sys, "_base_executable", sys.executable)


def _copy_of_repo(dest: str) -> str:
    """The repository's files (committed or not, never ignored ones): pip builds there, not in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = os.path.join(REPO_ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return dest


@pytest.fixture(scope="module")
def login_venv(tmp_path_factory) -> str:
    """A venv with ``pip install mscluster`` only (no extras); returns its bin folder."""
    root = tmp_path_factory.mktemp("install")
    venv = str(root / "venv")
    subprocess.run([_login_python(), "-m", "venv", venv], check=True, timeout=120)
    src = _copy_of_repo(str(root / "src"))
    done = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", src],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return os.path.join(venv, "bin")


def _mscluster(bin_dir: str, *args: str, cwd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([os.path.join(bin_dir, "mscluster"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_the_install_has_no_mindspore(login_venv):
    show = subprocess.run([os.path.join(login_venv, "python"), "-m", "pip", "show", "mindspore"],
                          capture_output=True, text=True, timeout=60)
    assert show.returncode != 0 and "not found" in show.stderr.lower(), show.stdout + show.stderr
    requires = subprocess.run([os.path.join(login_venv, "python"), "-c",
                               "import importlib.metadata, json; print(json.dumps(importlib.metadata.requires('mscluster')))"],
                              capture_output=True, text=True, timeout=60, check=True)
    pinned = [r for r in json.loads(requires.stdout) if r.split(";")[0].strip().lower().startswith(("mindspore", "numpy"))]
    assert pinned and all('extra == "mindspore"' in r for r in pinned), pinned  # only in the mindspore extra


def _is_kubernetes_manifest(path: str) -> bool:
    with open(path, encoding="utf-8") as handle:
        docs = [d for d in yaml.safe_load_all(handle) if d is not None]
    return bool(docs) and all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs)


def test_plan_answers_for_every_shipped_cluster_file(login_venv, tmp_path):
    files = sorted(glob.glob(os.path.join(REPO_ROOT, "cluster_configs", "**", "*.yaml"), recursive=True))
    planned = []
    for path in files:
        if _is_kubernetes_manifest(path):  # kubectl's, not a cluster file: its pods run `mscluster train`
            continue
        done = _mscluster(login_venv, "plan", path, cwd=str(tmp_path))
        assert done.returncode == 0, f"{path}: {done.stderr}"
        assert "processes (argv, folder):" in done.stdout, done.stdout[-2000:]
        planned.append(os.path.basename(path))
    assert len(planned) >= 5, planned


@pytest.mark.netns
@pytest.mark.ssh
def test_launch_from_the_venv_without_mindspore_runs_a_two_host_job(login_venv, netns_hosts, tmp_path, cifar_dir):
    lab = netns_hosts
    spec = lab.ssh_spec()
    project = user_folder(str(tmp_path / "project"), ("launcher.py", "trainer.py"))
    command = ["python", os.path.join(REPO_ROOT, "examples", "mlp_digits.py"), "--data-dir", cifar_dir,
               "--epochs", "1", "--steps-per-epoch", "4"]
    cluster = os.path.join(project, "c.yaml")
    with open(cluster, "w", encoding="utf-8") as handle:
        yaml.safe_dump({"name": "u", "backend": "cpu", "workdir": os.path.join(project, "runs"),
                        "hosts": [{"address": h.address, "devices": 1} for h in lab.hosts[:2]],
                        "python": sys.executable,  # the hosts' interpreter: it has MindSpore
                        "command": command, "env": {"MS_TOPO_TIMEOUT": "60"},
                        "ssh": {"user": spec.user, "port": spec.port, "key_file": spec.key_file,
                                "connect_timeout": 5, "known_hosts": spec.known_hosts}}, handle)
    proc = _mscluster(login_venv, "launch", cluster, "--console", "all", cwd=project, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "user file imported" not in proc.stdout + proc.stderr
    job = only_job_dir(os.path.join(project, "runs"))
    a, b = lab.hosts[0].address, lab.hosts[1].address
    digests = final_digests(job)
    assert sorted(digests) == sorted([f"{a}:0", f"{b}:1"]) and len(set(digests.values())) == 1, digests
    status = _mscluster(login_venv, "status", job, "--json", cwd=project)
    assert status.returncode == 0, status.stdout + status.stderr
    shown = json.loads(status.stdout)
    assert shown["state"] == "succeeded", shown
    assert {r["name"]: r["global_step"] for r in shown["ranks"] if r["rank"] is not None} == {"rank0": 4, "rank1": 4}
    assert job_processes(job) == []
