"""Feature: the model zoo's ResNet-50 / CIFAR-10 recipe in the shipped Ascend cluster files.

Description: the learning rate of every step is compared with the zoo's own generator, copied
here from mindspore-ai/models ``official/cv/ResNet/src/lr_generator.py`` (``_generate_poly_lr``,
the ``lr_decay_mode: poly`` of ``config/resnet50_cifar10_config.yaml``); the shipped files'
settings with that config and ``train.py`` (batch 32 per device, 224x224, 90 epochs, warm-up 5
epochs from ``lr_init`` 0.01 to ``lr_max`` 0.1 / 8 x devices, momentum 0.9, weight decay 1e-4,
loss scale 1024, ``amp_level="O3"``).
Expectation: the same learning rate at every step (float32), and the same settings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from launcher.config import load_cluster
from trainer.schedule import lr_per_step

CONFIGS = Path(__file__).resolve().parent.parent / "cluster_configs"


def zoo_poly_lr(lr_init, lr_max, total_steps, warmup_steps, start_steps):
    """mindspore-ai/models official/cv/ResNet/src/lr_generator.py, _generate_poly_lr, as written there."""
    lr_each_step = []
    if warmup_steps != 0:
        inc_each_step = (float(lr_max) - float(lr_init)) / float(warmup_steps)
    else:
        inc_each_step = 0
    for i in range(total_steps):
        if i < warmup_steps:
            lr = float(lr_init) + inc_each_step * float(i)
        else:
            base = (1.0 - (float(i) - float(warmup_steps)) / (float(total_steps) - float(warmup_steps)))
            lr = float(lr_max) * base * base
            if lr < 0.0:
                lr = 0.0
        lr_each_step.append(lr)
    return np.array(lr_each_step[start_steps:]).astype(np.float32)


@pytest.mark.parametrize("name,devices,peak", [("ascend_1x8.yaml", 8, 0.1), ("ascend_2x8.yaml", 16, 0.2)])
def test_the_shipped_files_are_the_zoos_recipe(name, devices, peak):
    cluster = load_cluster(str(CONFIGS / name))
    train = cluster.train_dict()
    assert cluster.world_size == devices
    assert {k: train[k] for k in ("arch", "image_size", "epochs", "batch_size", "lr_schedule", "warmup_epochs",
                                  "momentum", "weight_decay", "loss_scale", "amp_level")} == {
        "arch": "resnet50", "image_size": 224, "epochs": 90, "batch_size": 32, "lr_schedule": "warmup_poly",
        "warmup_epochs": 5, "momentum": 0.9, "weight_decay": 0.0001, "loss_scale": 1024, "amp_level": "O3"}
    assert train["lr"] == pytest.approx(0.1 / 8 * devices) == peak  # train.py: lr_max / 8 * device_num
    assert train["lr_init"] == 0.01
    steps_per_epoch = 50_000 // (32 * devices)  # CIFAR-10's 50,000 training images, drop_remainder
    ours = lr_per_step("warmup_poly", train["lr"], 90 * steps_per_epoch, steps_per_epoch, 5, train["lr_init"])
    zoo = zoo_poly_lr(0.01, peak, 90 * steps_per_epoch, 5 * steps_per_epoch, 0)
    np.testing.assert_allclose(ours, zoo, rtol=1e-6, atol=1e-9)


def test_without_lr_init_the_warm_up_is_unchanged():
    lr = lr_per_step("warmup_poly", 0.1, 100, 10, 1)
    assert lr[0] == pytest.approx(0.01) and lr[9] == pytest.approx(0.1)
