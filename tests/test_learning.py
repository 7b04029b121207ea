"""Feature: the trainer learns real images (scikit-learn's digits in CIFAR-10's binary format).

Description: one `mscluster train` process trains a small ResNet-18 (CIFAR stem) for 150 steps
with the tutorial's augmentation, then `predict` classifies a PNG written from a test image.
Expectation: >= 90% top-1 on the held-out test split; predict names the image's true digit.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SETTINGS = ["arch=resnet18", "stem=cifar", "width=16", "image_size=32", "batch_size=32", "epochs=3",
            "steps_per_epoch=50", "lr=0.05", "lr_schedule=cosine", "warmup_epochs=0.3",
            "weight_decay=0.0001", "eval_every_epochs=3", "log_every_steps=50", "tensorboard=false"]


def _cli(*args: str, cwd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscluster_cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar_dir):
    work = tmp_path_factory.mktemp("learn")
    proc = _cli("train", "--set", *SETTINGS, f"data_dir={cifar_dir}", f"output_dir={work}", cwd=str(work))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ckpts = sorted(os.listdir(work / "checkpoints"))
    return work, proc.stdout, str(work / "checkpoints" / [c for c in ckpts if c.endswith(".ckpt")][-1])


def test_small_resnet_reaches_90_percent_on_digits(trained):
    _, out, _ = trained
    top1 = float(re.search(r"^eval epoch=3 top1=([\d.]+) ", out, re.M).group(1))
    assert top1 >= 0.90, out[-2000:]


def test_predict_names_the_digit_of_a_png(trained, cifar_dir, tmp_path):
    from PIL import Image

    from trainer.standin import read_cifar_bin

    _, _, ckpt = trained
    images, labels = read_cifar_bin(os.path.join(cifar_dir, "test_batch.bin"))
    # three test images, saved larger than 32x32 as a user's file would be
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(images[i]).resize((96, 96), Image.NEAREST).save(path)
        paths.append(str(path))
    proc = _cli("predict", "--checkpoint", ckpt, *paths, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    got = [re.match(rf"^{re.escape(p)}: (\d) (0\.\d+|1\.0+)$", line) for p, line in zip(paths, lines)]
    assert all(got), lines
    correct = sum(int(m.group(1)) == int(labels[i]) for i, m in enumerate(got))
    assert correct >= 2, (lines, labels[:3])


def test_two_ranks_with_the_float16_gradient_exchange_reach_90_percent(tmp_path, cifar_dir):
    """grad_allreduce_dtype float16 on 2 ranks (16 images each, the same 32 a step as above)."""
    import json

    from helpers import run_launch, write_cluster

    train = dict(pair.split("=", 1) for pair in SETTINGS)
    train = {k: (yaml_scalar(v)) for k, v in train.items()}
    train.update(batch_size=16, grad_allreduce_dtype="float16", data_dir=cifar_dir)
    cluster = write_cluster(str(tmp_path / "c.yaml"), cifar_dir, train=train)
    proc = run_launch(cluster, "--job-dir", str(tmp_path / "job"), cwd=str(tmp_path), timeout=900, console="0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.load(open(tmp_path / "job" / "result.json"))
    assert result["eval"]["top1"] >= 0.90, result["eval"]


def yaml_scalar(text: str):
    import yaml

    return yaml.safe_load(text)
