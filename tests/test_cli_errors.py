"""Feature: bad input gets one clear line, a non-zero exit and no traceback.

Description: the real `mscluster` command with a missing data folder, a truncated data file, an
unknown setting, a missing or sidecar-less checkpoint, an unreadable image, a bad cluster file.
Expectation: exit code 2, exactly one line on stderr naming the file or key, nothing deleted.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def _cli(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscluster_cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


TINY = ["arch=resnet18", "stem=cifar", "width=4", "image_size=32", "steps_per_epoch=1", "batch_size=8"]


def test_missing_data_dir(tmp_path):
    missing = str(tmp_path / "nowhere")
    _one_line_error(_cli("train", "--set", *TINY, f"data_dir={missing}", cwd=str(tmp_path)), missing)


def test_truncated_data_file(tmp_path, cifar_dir):
    copy = tmp_path / "data"
    shutil.copytree(cifar_dir, copy)
    with open(copy / "data_batch_1.bin", "r+b") as handle:
        handle.truncate(1000)
    line = _one_line_error(_cli("train", "--set", *TINY, f"data_dir={copy}", cwd=str(tmp_path)),
                           "data_batch_1.bin")
    assert "1000" in line
    assert os.path.getsize(copy / "data_batch_1.bin") == 1000  # nothing of the user's touched


def test_unknown_setting(tmp_path):
    _one_line_error(_cli("train", "--set", "epochs=2", "learning_rate=0.1", cwd=str(tmp_path)), "learning_rate")


def test_bad_setting_value(tmp_path):
    _one_line_error(_cli("train", "--set", "arch=resnet5", cwd=str(tmp_path)), "arch")


def test_missing_settings_file(tmp_path):
    _one_line_error(_cli("train", "--config", str(tmp_path / "none.yaml"), cwd=str(tmp_path)), "none.yaml")


def test_missing_checkpoint(tmp_path, cifar_dir):
    ckpt = str(tmp_path / "gone.ckpt")
    _one_line_error(_cli("eval", "--checkpoint", ckpt, "--data-dir", cifar_dir, cwd=str(tmp_path)), ckpt)


def test_checkpoint_without_sidecar_is_refused(tmp_path, cifar_dir):
    from PIL import Image

    ckpt = tmp_path / "foreign.ckpt"
    ckpt.write_bytes(b"\0" * 128)
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    _one_line_error(_cli("predict", "--checkpoint", str(ckpt), str(image), cwd=str(tmp_path)), "sidecar")
    _one_line_error(_cli("eval", "--checkpoint", str(ckpt), "--data-dir", cifar_dir, cwd=str(tmp_path)), "sidecar")


def test_unreadable_image(tmp_path):
    image = tmp_path / "notes.png"
    image.write_text("not an image")
    ckpt = tmp_path / "x.ckpt"
    _one_line_error(_cli("predict", "--checkpoint", str(ckpt), str(image), cwd=str(tmp_path)), "notes.png")


def test_bad_cluster_file_names_file_field_and_line(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("name: t\nbackend: cpu\nhosts:\n  - {address: localhost, devices: -2}\n")
    _one_line_error(_cli("launch", str(cluster), cwd=str(tmp_path)), "c.yaml", "hosts[0].devices", ":4")
    assert not os.path.exists(tmp_path / "runs")


def test_fresh_run_refuses_a_folder_holding_checkpoints(tmp_path, cifar_dir):
    ckpts = tmp_path / "out" / "checkpoints"
    ckpts.mkdir(parents=True)
    earlier = ckpts / "ckpt_e0001_s000000010.ckpt"
    earlier.write_bytes(b"an earlier run's checkpoint")
    proc = _cli("train", "--set", *TINY, f"data_dir={cifar_dir}", f"output_dir={tmp_path / 'out'}", cwd=str(tmp_path))
    _one_line_error(proc, str(ckpts), "resume=auto")
    assert earlier.read_bytes() == b"an earlier run's checkpoint" and os.listdir(ckpts) == [earlier.name]


def test_resume_into_a_folder_that_is_no_job_is_refused(tmp_path, cifar_dir):
    cluster = tmp_path / "c.yaml"
    cluster.write_text(f"name: t\nbackend: cpu\nhosts: [{{address: localhost, devices: 2}}]\n"
                       f"train: {{data_dir: {cifar_dir}}}\n")
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"jpeg")
    proc = _cli("launch", str(cluster), "--job-dir", str(mine), "--set", "train.resume=auto", cwd=str(tmp_path))
    _one_line_error(proc, str(mine), "not an mscluster job folder")
    assert os.listdir(mine) == ["cat.jpg"]
