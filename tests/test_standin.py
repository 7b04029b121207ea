"""The digits stand-in: CIFAR-10's binary layout, disjoint splits, safe writes."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from trainer.errors import DataError
from trainer.standin import (MARKER, RECORD_BYTES, RECORDS_PER_FILE, make_digits_standin,
                             read_cifar_bin, write_cifar_bin)


def test_write_read_round_trip_and_record_layout(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 9, 3, 255, 7])
    path = str(tmp_path / "x.bin")
    write_cifar_bin(path, images, labels)

    raw = np.fromfile(path, dtype=np.uint8)
    assert raw.size == 5 * RECORD_BYTES
    record = raw[RECORD_BYTES:2 * RECORD_BYTES]  # the second record, as CIFAR-10 lays it out
    assert record[0] == 9
    assert np.array_equal(record[1:1025], images[1, :, :, 0].ravel())  # R plane, row-major
    assert np.array_equal(record[1025:2049], images[1, :, :, 1].ravel())  # G
    assert np.array_equal(record[2049:], images[1, :, :, 2].ravel())  # B

    back_images, back_labels = read_cifar_bin(path)
    assert np.array_equal(back_images, images)
    assert np.array_equal(back_labels, labels)


def test_read_rejects_a_truncated_file_naming_it(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(b"\0" * (RECORD_BYTES + 10))
    with pytest.raises(DataError, match="cut.bin"):
        read_cifar_bin(str(path))


def test_standin_files_hold_real_digits_in_disjoint_splits(standin_info):
    folder = standin_info.dir
    assert sorted(os.listdir(folder)) == sorted(
        ["data_batch_1.bin", "test_batch.bin", "batches.meta.txt", MARKER])
    with open(os.path.join(folder, "batches.meta.txt"), encoding="ascii") as handle:
        assert handle.read().split() == [str(digit) for digit in range(10)]

    train_images, train_labels = read_cifar_bin(os.path.join(folder, "data_batch_1.bin"))
    test_images, test_labels = read_cifar_bin(os.path.join(folder, "test_batch.bin"))
    assert train_images.shape == test_images.shape == (RECORDS_PER_FILE, 32, 32, 3)
    assert standin_info.train_count + standin_info.test_count == 1797  # all of load_digits

    # Padding cycles each split's own images: record i repeats record i % n.
    n_train, n_test = standin_info.train_count, standin_info.test_count
    assert np.array_equal(train_images[n_train:2 * n_train], train_images[:n_train])
    assert np.array_equal(test_labels[n_test:2 * n_test], test_labels[:n_test])
    # Grey digits: R == G == B, the full 0..255 range, every class in both splits.
    assert np.array_equal(train_images[..., 0], train_images[..., 2])
    assert train_images.min() == 0 and train_images.max() == 255
    assert set(train_labels[:n_train]) == set(test_labels[:n_test]) == set(range(10))
    # The splits share no image: no test digit leaks into training.
    train_keys = {image.tobytes() for image in train_images[:n_train]}
    leaked = sum(image.tobytes() in train_keys for image in test_images[:n_test])
    assert leaked == 0  # (load_digits' 1,797 images are all distinct)


def test_standin_rewrites_its_own_folder_but_refuses_a_real_dataset(tmp_path):
    first = make_digits_standin(str(tmp_path), seed=0)
    second = make_digits_standin(str(tmp_path), seed=1)  # replacing a stand-in is fine
    assert second.dir == first.dir
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-batches-bin"]  # no temporary folders left

    real = tmp_path / "elsewhere" / "cifar-10-batches-bin"
    real.mkdir(parents=True)
    (real / "data_batch_1.bin").write_bytes(b"real data")
    with pytest.raises(DataError, match="refusing to overwrite"):
        make_digits_standin(str(tmp_path / "elsewhere"))
    assert (real / "data_batch_1.bin").read_bytes() == b"real data"
    assert sorted(os.listdir(tmp_path / "elsewhere")) == ["cifar-10-batches-bin"]


def test_module_entry_point_writes_and_says_where(tmp_path, repo_root):
    result = subprocess.run([sys.executable, "-m", "trainer.standin", str(tmp_path / "out")],
                            cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "out" / "cifar-10-batches-bin"
    assert str(target) in result.stdout
    assert (target / "test_batch.bin").stat().st_size == RECORDS_PER_FILE * RECORD_BYTES
