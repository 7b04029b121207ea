"""Feature: full-state checkpoints written atomically and vouched for by a SHA-256 sidecar.

Description: real MindSpore checkpoints of a tiny ResNet trained two steps with Momentum (weights,
BatchNorm statistics, optimizer moments, global step), written by ``trainer.checkpoint`` inline
and in the background; then damaged the ways disks and kills damage files.
Expectation: only complete checkpoints whose sidecar matches are ever listed or loaded; a
truncated or bit-flipped file is named and skipped; temporaries are never listed; older
checkpoints are removed only after a newer one is complete, and never in favour of a bad one.
"""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from trainer import checkpoint as ckpt
from trainer.errors import CheckpointError
from trainer.resnet import build_resnet
from trainer.train import _snapshot


@pytest.fixture(scope="module")
def trained():
    """A TrainOneStepCell (tiny ResNet-18, Momentum) after two steps, and a step function."""
    ms.set_seed(3)
    net = build_resnet("resnet18", num_classes=10, width=4, stem="cifar")
    opt = nn.Momentum(net.trainable_params(), learning_rate=ms.Tensor(np.linspace(0.01, 0.001, 8, dtype=np.float32)),
                      momentum=0.9)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    cell = nn.TrainOneStepCell(nn.WithLossCell(net, loss), opt)
    cell.set_train()
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.random((4, 3, 32, 32), dtype=np.float32))
    y = ms.Tensor(rng.integers(0, 10, 4).astype(np.int32))

    def step():
        cell(x, y)

    step()
    step()
    return cell, step


def _fields(epoch: int, step_in_epoch: int, global_step: int) -> dict:
    return dict(epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step, dataset_seed=1,
                fingerprint={"arch": "resnet18", "width": 4}, config={"arch": "resnet18"})


def _save(cell, directory, global_step, epoch=0, step_in_epoch=None, pause=0.0):
    return ckpt.save(lambda p: ms.save_checkpoint(cell, p), str(directory),
                     _fields(epoch, global_step if step_in_epoch is None else step_in_epoch, global_step), pause)


def _arrays(path) -> dict[str, np.ndarray]:
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def test_save_is_complete_and_holds_the_full_training_state(trained, tmp_path):
    cell, _ = trained
    path, meta = _save(cell, tmp_path, global_step=2)
    assert os.path.basename(path) == "ckpt_e0000_s000000002.ckpt"
    assert sorted(os.listdir(tmp_path)) == ["ckpt_e0000_s000000002.ckpt", "ckpt_e0000_s000000002.ckpt.json"]
    side = json.load(open(ckpt.sidecar_path(path)))
    assert side["size"] == os.path.getsize(path) and side["sha256"] == ckpt._sha256(path)
    assert (side["epoch"], side["step_in_epoch"], side["global_step"]) == (0, 2, 2)
    assert ckpt.verify(path) == meta
    arrays = _arrays(path)
    # weights, BatchNorm moving statistics, momentum buffers and the optimizer's step counter
    assert int(arrays["global_step"][0]) == 2
    moments = [k for k in arrays if k.startswith("moments.")]
    assert len(moments) == len(cell.optimizer.parameters) and any(np.abs(arrays[k]).max() > 0 for k in moments)
    assert any(k.endswith("moving_mean") for k in arrays) and any(k.endswith("moving_variance") for k in arrays)
    for _, param in cell.parameters_and_names():
        np.testing.assert_array_equal(arrays[param.name], param.asnumpy(), err_msg=param.name)


def test_truncated_and_bit_flipped_files_fail_verification(trained, tmp_path):
    cell, _ = trained
    good, _ = _save(cell, tmp_path / "a", global_step=2)
    truncated, _ = _save(cell, tmp_path / "b", global_step=2)
    with open(truncated, "r+b") as handle:
        handle.truncate(os.path.getsize(truncated) - 100)
    flipped, _ = _save(cell, tmp_path / "c", global_step=2)
    os.chmod(flipped, 0o600)
    with open(flipped, "r+b") as handle:
        handle.seek(os.path.getsize(flipped) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    assert os.path.getsize(flipped) == os.path.getsize(good)
    with pytest.raises(CheckpointError, match=r"ckpt_e0000_s000000002\.ckpt: size \d+ bytes differs.*truncated"):
        ckpt.verify(truncated)
    with pytest.raises(CheckpointError, match=r"ckpt_e0000_s000000002\.ckpt: SHA-256 differs.*corrupt"):
        ckpt.verify(flipped)
    os.remove(ckpt.sidecar_path(good))
    with pytest.raises(CheckpointError, match="no sidecar"):
        ckpt.verify(good)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        ckpt.verify(str(tmp_path / "missing.ckpt"))


def test_unreadable_sidecar_fails_verification(trained, tmp_path):
    cell, _ = trained
    path, _ = _save(cell, tmp_path, global_step=2)
    with open(ckpt.sidecar_path(path), "w") as handle:
        handle.write('{"file": "x", ')  # a sidecar torn by a crash
    with pytest.raises(CheckpointError, match="unreadable sidecar"):
        ckpt.verify(path)


def test_latest_good_skips_bad_newer_checkpoints_and_names_them(trained, tmp_path):
    cell, step = trained
    oldest, _ = _save(cell, tmp_path, global_step=2)
    middle, _ = _save(cell, tmp_path, global_step=4)
    newer, _ = _save(cell, tmp_path, global_step=6)
    newest, _ = _save(cell, tmp_path, global_step=8)
    with open(newest, "r+b") as handle:
        handle.truncate(10)
    os.remove(ckpt.sidecar_path(newer))  # killed between the rename and the sidecar
    path, meta, skipped = ckpt.latest_good(str(tmp_path))
    assert path == middle and meta.global_step == 4
    assert [p for p, _ in skipped] == [newest, newer]
    assert "truncated" in skipped[0][1] and "no sidecar" in skipped[1][1]
    assert ckpt.latest_good(str(tmp_path / "nothing-here")) == (None, None, [])


def test_temporary_files_are_never_listed(trained, tmp_path):
    cell, _ = trained
    good, _ = _save(cell, tmp_path, global_step=2)
    # what a kill mid-write leaves: our temporary and MindSpore's own, both at a newer position
    for name in (".tmp-ckpt_e0009_s000000099.ckpt", ".tmp-ckpt_e0009_s000000099.tmp"):
        with open(tmp_path / name, "wb") as handle:
            handle.write(b"\0" * 100)
    assert ckpt.list_checkpoints(str(tmp_path)) == [good]
    assert ckpt.latest_good(str(tmp_path))[0] == good


def test_a_kill_mid_write_leaves_the_previous_checkpoint_the_newest_good_one(trained, tmp_path):
    cell, _ = trained
    previous, _ = _save(cell, tmp_path, global_step=2)
    before = open(previous, "rb").read()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (_save(cell, tmp_path, global_step=4, pause=3.0), done.set()))
    worker.start()
    def torn():  # the temporary has a fresh, unpredictable name: ".tmp-ckpt_e0000_s000000004.<random>.ckpt"
        found = list(tmp_path.glob(ckpt.TMP_PREFIX + "ckpt_e0000_s000000004.*.ckpt"))
        return found[0] if found and found[0].stat().st_size < os.path.getsize(previous) // 2 + 10 else None

    deadline = time.monotonic() + 30
    while not torn():
        assert time.monotonic() < deadline, "the save never reached its pause"
        time.sleep(0.05)
    tmp = torn()
    # the torn temporary is on disk now: a resume at this moment takes the previous checkpoint
    assert ckpt.list_checkpoints(str(tmp_path)) == [previous]
    assert ckpt.latest_good(str(tmp_path))[0] == previous
    worker.join(30)
    assert done.is_set()
    assert open(previous, "rb").read() == before
    assert ckpt.latest_good(str(tmp_path))[0].endswith("ckpt_e0000_s000000004.ckpt")
    assert not tmp.exists()


def test_prune_removes_old_ones_only_after_a_complete_save(trained, tmp_path):
    cell, _ = trained
    d = str(tmp_path)
    writer = ckpt.CheckpointWriter(d, keep_max=2, background=False)
    for gs in (2, 4, 6):
        writer.submit(lambda p: ms.save_checkpoint(cell, p), _fields(0, gs, gs))
    names = sorted(os.listdir(d))
    assert names == ["ckpt_e0000_s000000004.ckpt", "ckpt_e0000_s000000004.ckpt.json",
                     "ckpt_e0000_s000000006.ckpt", "ckpt_e0000_s000000006.ckpt.json"]

    def broken_write(path):  # the disk fills up half-way through
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        writer.submit(broken_write, _fields(0, 8, 8))
    # nothing was pruned for a save that did not complete; its temporary is not a checkpoint
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(d)] == ["ckpt_e0000_s000000004.ckpt",
                                                                       "ckpt_e0000_s000000006.ckpt"]
    writer.submit(lambda p: ms.save_checkpoint(cell, p), _fields(0, 10, 10))
    assert sorted(os.listdir(d)) == ["ckpt_e0000_s000000006.ckpt", "ckpt_e0000_s000000006.ckpt.json",
                                     "ckpt_e0000_s000000010.ckpt", "ckpt_e0000_s000000010.ckpt.json"]


def test_prune_never_trades_the_new_checkpoint_for_a_newer_bad_one(trained, tmp_path):
    """After resuming from an older checkpoint past a corrupt newer one, keep_max=1 must keep the new save."""
    cell, _ = trained
    d = str(tmp_path)
    _save(cell, d, global_step=4, epoch=1, step_in_epoch=0)
    bad, _ = _save(cell, d, global_step=8, epoch=2, step_in_epoch=0)
    with open(bad, "r+b") as handle:
        handle.truncate(10)
    writer = ckpt.CheckpointWriter(d, keep_max=1, background=False)
    new = writer.submit(lambda p: ms.save_checkpoint(cell, p), _fields(1, 2, 6))
    assert ckpt.latest_good(d)[0] == new
    assert os.path.exists(bad)  # an abandoned attempt's file: not ours to count or remove
    assert not os.path.exists(os.path.join(d, "ckpt_e0001_s000000004.ckpt"))


def test_background_write_saves_the_snapshot_not_the_live_parameters(trained, tmp_path):
    cell, step = trained
    inline = ckpt.CheckpointWriter(str(tmp_path / "inline"), keep_max=5, background=False)
    inline_path = inline.submit(lambda p: ms.save_checkpoint(cell, p), _fields(0, 2, 2))
    gate = threading.Event()
    saved = []
    background = ckpt.CheckpointWriter(str(tmp_path / "bg"), keep_max=5, background=True,
                                       on_saved=lambda path, meta, s: saved.append(path))
    snap = _snapshot(cell)

    def write(path):
        gate.wait(30)  # hold the write until training has moved on
        ms.save_checkpoint(snap, path)

    bg_path = background.submit(write, _fields(0, 2, 2))
    step()  # training goes on while the checkpoint is written
    gate.set()
    assert background.wait()[0] == bg_path and saved == [bg_path]
    a, b = _arrays(inline_path), _arrays(bg_path)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert int(b["global_step"][0]) + 1 == int(cell.optimizer.global_step.asnumpy()[0])


def test_background_write_error_is_raised_to_the_training_thread(tmp_path):
    writer = ckpt.CheckpointWriter(str(tmp_path), keep_max=2, background=True)

    def fails(path):
        raise OSError(5, "Input/output error")

    writer.submit(fails, _fields(0, 1, 1))
    with pytest.raises(OSError, match="Input/output error"):
        writer.wait()
    assert writer.wait() is None  # raised once
    assert ckpt.list_checkpoints(str(tmp_path)) == []


def test_fingerprint_mismatch_names_each_differing_key():
    saved = {"arch": "resnet18", "image_size": 32, "num_classes": 10, "world_size": 2}
    now = {"arch": "resnet50", "image_size": 32, "num_classes": 100, "world_size": 2}
    diff = ckpt.fingerprint_mismatch(saved, now)
    assert diff == ["arch ('resnet18' in the checkpoint, 'resnet50' now)",
                    "num_classes (10 in the checkpoint, 100 now)"]
    assert ckpt.fingerprint_mismatch(saved, dict(saved)) == []
