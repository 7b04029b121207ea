"""Feature: hostile and broken input never hangs, never shows a traceback, never exposes or overwrites.

Description: a battery of bad cluster files, command lines, SSH settings and checkpoint sidecars,
each run through the real ``mscluster`` command in a folder of sentinel files; alias bombs,
nesting, non-finite numbers, control characters, ``host:port``, counts past their bounds,
shell-active interpreter paths, missing or unparseable key and known_hosts files, sidecars of the
wrong types.
Expectation: each case exits non-zero within 5 s with exactly one line on stderr that names the
culprit (file and field, host, or path), no traceback, nothing written anywhere and no existing
file changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from helpers import REPO_ROOT

BASE = "name: t\nbackend: cpu\nhosts:\n  - {address: localhost, devices: 2}\n"
REMOTE = "name: t\nbackend: cpu\nhosts:\n  - {address: 10.255.255.1, devices: 1}\n"  # never contacted: files fail first

BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
    f"*a{i - 1}, *a{i - 1}]\n" for i in range(1, 9)) + BASE

CASES = [
    # (id, cluster-file text, extra CLI words, what the one line must say)
    ("alias bomb", BOMB, [], "aliases expand to more than"),
    ("deep list nesting", BASE + "env: " + "[" * 500 + "]" * 500 + "\n", [], "nested deeper than"),
    ("deep mapping nesting", BASE + "train: " + "{a: " * 300 + "1" + "}" * 300 + "\n", [], "nested deeper than"),
    ("recursive alias", BASE + "env: &e [*e]\n", [], "recursive alias"),
    ("huge file", BASE + "#" + "x" * (1 << 20) + "\n", [], "larger than 1024 KiB"),
    ("not yaml", "name: [unclosed\n", [], "not valid YAML"),
    ("not a mapping", "- just\n- a list\n", [], "expected a mapping of cluster settings"),
    ("duplicate key", BASE + "name: again\n", [], "duplicate key"),
    ("timeout nan", BASE + "ssh: {connect_timeout: .nan}\n", [], "ssh.connect_timeout: expected a number"),
    ("timeout inf", BASE + "ssh: {connect_timeout: .inf}\n", [], "ssh.connect_timeout: expected a number"),
    ("timeout zero", BASE + "ssh: {connect_timeout: 0}\n", [], "ssh.connect_timeout: must be > 0"),
    ("timeout negative", BASE + "ssh: {connect_timeout: -5}\n", [], "ssh.connect_timeout: must be > 0"),
    ("timeout huge", BASE + "ssh: {connect_timeout: 1.0e+9}\n", [], "at most 600 s"),
    ("timeout string", BASE + "ssh: {connect_timeout: soon}\n", [], "ssh.connect_timeout: expected a number"),
    ("lr nan", BASE + "train: {lr: .nan}\n", [], "train.lr: expected a finite number"),
    ("lr inf", BASE + "train: {lr: .inf}\n", [], "train.lr: expected a finite number"),
    ("warmup -inf", BASE + "train: {warmup_epochs: -.inf}\n", [], "train.warmup_epochs: expected a finite number"),
    ("momentum nan", BASE + "train: {momentum: .NaN}\n", [], "train.momentum: expected a finite number"),
    ("env value nan", BASE + "env: {A: .nan}\n", [], "env.A: expected a string or a number"),
    ("env value NUL", BASE + 'env: {A: "x\\0y"}\n', [], "env.A: holds a NUL character"),
    ("env name newline", BASE + 'env: {"A\\n": "1"}\n', [], "not a valid environment variable name"),
    ("env name equals", BASE + 'env: {"A=B": "1"}\n', [], "not a valid environment variable name"),
    ("env reserved", BASE + "env: {RANK_ID: '3'}\n", [], "env.RANK_ID: set by the launcher"),
    ("name trailing newline", 'name: "job\\n"\nhosts: [{address: localhost, devices: 1}]\n', [], "name: use letters"),
    ("name NUL", 'name: "j\\0b"\nhosts: [{address: localhost, devices: 1}]\n', [], "name: use letters"),
    ("name path", 'name: "../../etc"\nhosts: [{address: localhost, devices: 1}]\n', [], "name: use letters"),
    ("name too long", f"name: {'n' * 300}\nhosts: [{{address: localhost, devices: 1}}]\n", [], "name: use letters"),
    ("address newline", 'name: t\nhosts: [{address: "h\\n", devices: 1}]\n', [], "not a host name or IP address"),
    ("address space", 'name: t\nhosts: [{address: "h x", devices: 1}]\n', [], "not a host name or IP address"),
    ("address host:port", "name: t\nhosts: [{address: '10.0.0.2:2222', devices: 1}]\n", [], "under ssh.port"),
    ("address user@", "name: t\nhosts: [{address: 'me@10.0.0.2', devices: 1}]\n", [], "under ssh.user"),
    ("address semicolon", "name: t\nhosts: [{address: 'h;reboot', devices: 1}]\n", [], "not a host name"),
    ("workdir newline", BASE + 'workdir: "runs\\nx"\n', [], "workdir: holds a control character"),
    ("workdir NUL", BASE + 'workdir: "runs\\0x"\n', [], "workdir: holds a control character"),
    ("python space", BASE + "python: /usr/bin/python3 -c evil\n", [], "python: an interpreter path"),
    ("python subshell", BASE + "python: '$(id)'\n", [], "python: an interpreter path"),
    ("python semicolon", BASE + "python: 'python3;id'\n", [], "python: an interpreter path"),
    ("python quote", BASE + "python: \"py'thon\"\n", [], "python: an interpreter path"),
    ("ssh user space", BASE + "ssh: {user: 'a b'}\n", [], "ssh.user: not a user name"),
    ("ssh key newline", BASE + 'ssh: {key_file: "k\\n"}\n', [], "ssh.key_file: holds a control character"),
    ("cwd newline", BASE + 'command: [python, x.py]\ncwd: "/tmp\\n"\n', [], "cwd: holds a control character"),
    ("devices huge", "name: t\nhosts: [{address: localhost, devices: 100000}]\n", [], "at most 256 per host"),
    ("devices long list", "name: t\nhosts: [{address: localhost, devices: [" + ", ".join(map(str, range(300)))
     + "]}]\n", [], "at most 256 per host"),
    ("device id huge", "name: t\nhosts: [{address: localhost, devices: [70000]}]\n", [], "device ids are 0..65535"),
    ("device id bool", "name: t\nhosts: [{address: localhost, devices: [true]}]\n", [], "expected a device id"),
    ("ascend 9 npus", "name: t\nbackend: ascend\nhosts: [{address: 10.0.0.1, devices: 9}]\n", [], "at most 8 NPUs"),
    ("restarts huge", BASE + "restarts: 1000\n", [], "restarts: must be 0..100"),
    ("restarts float", BASE + "restarts: 1.5\n", [], "restarts: expected an integer"),
    ("image size huge", BASE + "train: {image_size: 100000}\n", [], "train.image_size: at most 1024"),
    ("batch huge", BASE + "train: {batch_size: 1000000000}\n", [], "train.batch_size: at most 65536"),
    ("epochs huge", BASE + "train: {epochs: 1000000000}\n", [], "train.epochs: at most 100000"),
    ("data_dir newline", BASE + 'train: {data_dir: "d\\ne"}\n', [], "train.data_dir: holds a control character"),
    ("command NUL", BASE + 'command: [python, "a\\0b"]\n', [], "command[1]: holds a NUL character"),
    ("command mapping", BASE + "command: {a: 1}\n", [], "command: expected a list of strings"),
    ("console out of range", BASE + "console: [99]\n", [], "console[0]: expected a rank 0..1"),
    ("scheduler port", BASE + "scheduler_port: 70000\n", [], "scheduler_port: a port is 1..65535"),
    ("unknown key", BASE + "hostz: []\n", [], "unknown key 'hostz'"),
    ("no hosts", "name: t\nhosts: []\n", [], "hosts: must list at least one host"),
    ("set nan timeout", BASE, ["--set", "ssh.connect_timeout=.nan"], "ssh.connect_timeout (from --set)"),
    ("set inf lr", BASE, ["--set", "train.lr=.inf"], "train.lr (from --set): expected a finite number"),
    ("set recursive value", BASE, ["--set", "env=&a [*a]"], "env (from --set): expected a mapping"),
    ("grace nan", BASE, ["--grace-period", "nan"], "--grace-period: expected seconds from 0 to 3600"),
    ("grace inf", BASE, ["--grace-period", "inf"], "--grace-period: expected seconds from 0 to 3600"),
    ("grace negative", BASE, ["--grace-period", "-1"], "--grace-period: expected seconds from 0 to 3600"),
    ("console flag bad", BASE, ["--console", "x"], "console"),
    ("watchdog nan", BASE + "watchdog: {stall_timeout: .nan}\n", [], "watchdog.stall_timeout: expected a number"),
    ("watchdog too short", BASE + "watchdog: {stall_timeout: 1}\n", [], "watchdog.stall_timeout: must be 5..86400"),
    ("watchdog beats too slow", BASE + "watchdog: {stall_timeout: 10, beat_interval: 5}\n", [],
     "watchdog.beat_interval: must be under a third of stall_timeout"),
    ("watchdog not auto", BASE + "watchdog: {stall_timeout: often}\n", [],
     "watchdog.stall_timeout: expected a number of seconds or auto, got 'often'"),
    ("watchdog beats too slow for auto", BASE + "watchdog: {beat_interval: 12}\n", [],
     "watchdog.beat_interval: must be under a third of stall_timeout (30 s, the least auto sets)"),
    ("watchdog unknown key", BASE + "watchdog: {stall: 10}\n", [], "unknown key 'stall'"),
    ("keepalive nan", BASE + "ssh: {keepalive_interval: .nan}\n", [], "ssh.keepalive_interval: expected seconds"),
    ("keepalive count zero", BASE + "ssh: {keepalive_count: 0}\n", [], "ssh.keepalive_count: must be 1..100"),
]


def _snapshot(root: str) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content (or its link target, or a folder mark)."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                seen[path] = "link:" + os.readlink(path)
            elif os.path.isdir(path):
                seen[path] = "dir"
            else:
                with open(path, "rb") as handle:
                    seen[path] = hashlib.sha256(handle.read()).hexdigest()
    return seen


def _one_line_failure(argv: list[str], cwd: str, expect: str) -> str:
    before = _snapshot(cwd)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mscluster_cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": REPO_ROOT})
    elapsed = time.monotonic() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert expect in lines[0], lines[0]
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert _snapshot(cwd) == before, "something was written or changed"
    return lines[0]


@pytest.fixture
def sandbox(tmp_path):
    (tmp_path / "keep.txt").write_text("the user's own file\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old.txt").write_text("an earlier job's notes\n")
    return tmp_path


@pytest.mark.parametrize("text, extra, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_cluster_input_is_one_line_and_touches_nothing(sandbox, text, extra, expect):
    path = sandbox / "c.yaml"
    path.write_text(text)
    for verb in ("plan", "launch"):
        if verb == "plan" and "--grace-period" in extra:
            continue
        line = _one_line_failure([verb, str(path), *extra], str(sandbox), expect)
        if "--grace-period" not in extra and "--console" not in extra:
            assert line.startswith(f"mscluster {verb}: error: {path}"), line  # the file is named


def _keyfiles(tmp_path, key: str = "ok", known: str = "ok"):
    good_key = tmp_path / "id_test"
    good_key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot used\n-----END OPENSSH PRIVATE KEY-----\n")
    good_known = tmp_path / "known_hosts"
    good_known.write_text("10.255.255.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdEi0u6Xh5c0gTzMm9Q3v5ZpPZP6kqM0HUh6t1b2Hn7\n")
    paths = {"ok": None, "missing": tmp_path / "absent", "folder": tmp_path}
    k = paths.get(key, good_key) if key != "ok" else good_key
    h = paths.get(known, good_known) if known != "ok" else good_known
    if known == "garbage":
        h = tmp_path / "bad_known_hosts"
        h.write_text("# a comment is fine\nthis is not a host key line\n")
    return k, h


@pytest.mark.parametrize("key, known, expect", [
    ("missing", "ok", "ssh.key_file: {p}/absent does not exist"),
    ("folder", "ok", "ssh.key_file: {p} is a folder, not a file"),
    ("ok", "missing", "ssh.known_hosts: {p}/absent does not exist"),
    ("ok", "folder", "ssh.known_hosts: {p} is a folder, not a file"),
    ("ok", "garbage", "ssh.known_hosts: {p}/bad_known_hosts line 2 does not parse"),
])
def test_bad_ssh_files_are_one_line_before_any_connection(sandbox, key, known, expect):
    key_file, known_hosts = _keyfiles(sandbox, key, known)
    path = sandbox / "c.yaml"
    path.write_text(REMOTE + f"ssh: {{key_file: '{key_file}', known_hosts: '{known_hosts}', connect_timeout: 30}}\n")
    _one_line_failure(["launch", str(path)], str(sandbox), expect.format(p=sandbox))


def _sidecar(tmp_path, **changes) -> str:
    ckpt = tmp_path / "ckpt_e0001_s000000004.ckpt"
    ckpt.write_bytes(b"not really a checkpoint")
    meta = {"file": ckpt.name, "size": 23, "sha256": hashlib.sha256(b"not really a checkpoint").hexdigest(),
            "epoch": 1, "step_in_epoch": 0, "global_step": 4, "dataset_seed": 1, "fingerprint": {}, "config": {},
            "class_names": [], "metrics": {}, "saved_at": 1.0, **changes}
    for key in [k for k, v in changes.items() if v is _DROP]:
        meta.pop(key)
    (tmp_path / (ckpt.name + ".json")).write_text(json.dumps(meta))
    return str(ckpt)


_DROP = object()


@pytest.mark.parametrize("changes, expect", [
    ({"size": "23"}, "size has the wrong type: str"),
    ({"global_step": -4}, "global_step has the wrong type"),
    ({"epoch": True}, "epoch has the wrong type: bool"),
    ({"fingerprint": []}, "fingerprint has the wrong type: list"),
    ({"sha256": "zz"}, "sha256 is not a hex digest"),
    ({"evil": 1}, "unknown field 'evil'"),
    ({"config": _DROP}, "missing field 'config'"),
    ({"sha256": "0" * 64}, "SHA-256 differs from the sidecar's"),
    ({"size": 99}, "size 23 bytes differs from the sidecar's 99"),
])
def test_a_bad_sidecar_is_one_line(sandbox, changes, expect):
    ckpt = _sidecar(sandbox, **changes)
    _one_line_failure(["predict", "--checkpoint", ckpt, _png(sandbox)], str(sandbox), expect)


def test_sidecar_that_is_not_an_object_is_one_line(sandbox):
    ckpt = _sidecar(sandbox)
    with open(ckpt + ".json", "w") as handle:
        handle.write("[1, 2, 3]")
    _one_line_failure(["predict", "--checkpoint", ckpt, _png(sandbox)], str(sandbox), "not a JSON object")


def _png(folder) -> str:
    from PIL import Image

    path = folder / "digit.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return str(path)

