"""CIFAR-10 pipelines on real files with real MindSpore: sharding, transforms, validation, download."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import time

import numpy as np
import pytest

from trainer.data import (FILE_BYTES, MEAN, STD, class_names, create_dataset, eval_transform_image,
                          resolve_data_dir, validate_split)
from trainer.errors import DataError, ImageError
from trainer.standin import read_cifar_bin, write_cifar_bin

RECORDS = 10_000
LEFT_BLUE, RIGHT_BLUE = 200, 100  # blue of the left and right image halves: shows flips


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory) -> str:
    """Train and test files whose record i is recoverable from its centre pixel, label i % 10.

    Red and green are uniform (i // 256, i % 256), so random crops (at most 4 pixels) and flips
    keep the centre; blue is 200 on the left half and 100 on the right, so a flip shows.
    """
    folder = tmp_path_factory.mktemp("indexed") / "cifar-10-batches-bin"
    folder.mkdir()
    index = np.arange(RECORDS)
    images = np.empty((RECORDS, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = (index // 256)[:, None, None]
    images[..., 1] = (index % 256)[:, None, None]
    images[:, :, :16, 2] = LEFT_BLUE
    images[:, :, 16:, 2] = RIGHT_BLUE
    for name in ("data_batch_1.bin", "test_batch.bin"):
        write_cifar_bin(str(folder / name), images, index % 10)
    return str(folder)


def _pixels(batch: np.ndarray) -> np.ndarray:
    """Undo Rescale + Normalize + HWC2CHW: uint8-valued (N, H, W, 3)."""
    chw = batch * np.array(STD, np.float32)[:, None, None] + np.array(MEAN, np.float32)[:, None, None]
    return np.rint(chw * 255.0).astype(np.int64).transpose(0, 2, 3, 1)


def _indices(batch: np.ndarray) -> np.ndarray:
    centre = _pixels(batch)[:, 16, 16]
    return centre[:, 0] * 256 + centre[:, 1]


def _epochs(dataset, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(record indices, labels) per epoch, read the way training reads: one iterator, N epochs."""
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs)
    out = []
    for _ in range(epochs):
        batches = list(iterator)
        out.append((np.concatenate([_indices(images) for images, _ in batches]),
                    np.concatenate([labels for _, labels in batches])))
    return out


# --- sharding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ranks", [2, 4])
def test_shards_are_disjoint_and_cover_the_training_set_every_epoch(indexed_dir, ranks):
    per_rank = [_epochs(create_dataset(indexed_dir, training=True, image_size=32, batch_size=100,
                                       rank=rank, rank_size=ranks, seed=5), epochs=2)
                for rank in range(ranks)]
    for epoch in range(2):
        seen = np.concatenate([per_rank[rank][epoch][0] for rank in range(ranks)])
        assert len(seen) == RECORDS  # every rank got RECORDS / ranks images ...
        assert np.array_equal(np.sort(seen), np.arange(RECORDS))  # ... and none twice
        for indices, labels in (per_rank[rank][epoch] for rank in range(ranks)):
            assert np.array_equal(labels, indices % 10)  # labels stay with their images
    first_rank = per_rank[0]
    assert not np.array_equal(first_rank[0][0], first_rank[1][0])  # reshuffled each epoch


def test_same_seed_repeats_the_order_and_another_seed_changes_it(indexed_dir):
    def first_batches(seed):
        dataset = create_dataset(indexed_dir, training=True, image_size=32, batch_size=50,
                                 rank=1, rank_size=2, seed=seed)
        iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
        return np.concatenate([_indices(next(iterator)[0]) for _ in range(3)])

    order = first_batches(3)
    assert np.array_equal(first_batches(3), order)  # a restarted run reads the same order
    assert not np.array_equal(first_batches(4), order)


def test_eval_reads_every_test_record_once_in_order(indexed_dir):
    dataset = create_dataset(indexed_dir, training=False, image_size=32, batch_size=128)
    sizes, indices, labels = [], [], []
    for images, batch_labels in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1):
        sizes.append(len(batch_labels))
        indices.append(_indices(images))
        labels.append(batch_labels)
    assert sum(sizes) == RECORDS and sizes[-1] == RECORDS % 128  # the partial batch is kept
    assert np.array_equal(np.concatenate(indices), np.arange(RECORDS))
    assert np.array_equal(np.concatenate(labels), np.arange(RECORDS) % 10)


def test_sharded_eval_covers_the_test_set(indexed_dir):
    seen = []
    for rank in range(2):
        dataset = create_dataset(indexed_dir, training=False, image_size=32, batch_size=500,
                                 rank=rank, rank_size=2)
        seen += [_indices(images) for images, _ in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)]
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(RECORDS))


@pytest.mark.parametrize("ranks,images", [(1, 1000), (2, 1000), (3, 1001), (3, 2)])
def test_eval_images_is_the_splits_first_images_over_all_ranks(indexed_dir, ranks, images):
    """``eval_images``: a quick look during a long run (and the tests' own evaluations) on a prefix."""
    seen = []
    for rank in range(ranks):
        dataset = create_dataset(indexed_dir, training=False, image_size=32, batch_size=300,
                                 rank=rank, rank_size=ranks, images=images)
        seen += [_indices(batch) for batch, _ in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)]
    # fewer images than ranks: each rank still evaluates one (every rank takes part in the collective sum)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(max(images, ranks)))


# --- transforms -------------------------------------------------------------------------------

def test_training_crops_with_zero_padding_and_flips_but_eval_does_not(indexed_dir):
    train = create_dataset(indexed_dir, training=True, image_size=32, batch_size=1000, seed=2)
    images = _pixels(next(train.create_tuple_iterator(output_numpy=True, num_epochs=1))[0])
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1], 2]
    padded = np.mean((corners == 0).any(axis=1))  # unless the crop lands exactly centred
    flipped = np.mean(images[:, 16, 8, 2] == RIGHT_BLUE)
    assert padded > 0.9, padded
    assert 0.35 < flipped < 0.65, flipped

    test = create_dataset(indexed_dir, training=False, image_size=32, batch_size=1000)
    images = _pixels(next(test.create_tuple_iterator(output_numpy=True, num_epochs=1))[0])
    assert np.all(images[:, :, :16, 2] == LEFT_BLUE) and np.all(images[:, :, 16:, 2] == RIGHT_BLUE)


@pytest.mark.parametrize("image_size", [32, 64])
def test_train_batches_are_float32_chw_with_int32_labels(cifar_dir, image_size):
    dataset = create_dataset(cifar_dir, training=True, image_size=image_size, batch_size=64)
    assert dataset.get_dataset_size() == RECORDS // 64  # the last partial batch is dropped
    images, labels = next(dataset.create_tuple_iterator(output_numpy=True, num_epochs=1))
    assert images.shape == (64, 3, image_size, image_size) and images.dtype == np.float32
    assert labels.shape == (64,) and labels.dtype == np.int32
    assert set(np.unique(labels)) <= set(range(10))
    # Normalized with CIFAR-10's statistics: black pixels land near -mean/std.
    assert images.min() == pytest.approx(-MEAN[0] / STD[0], abs=0.05)


def test_predict_transform_matches_the_eval_pipeline(cifar_dir):
    dataset = create_dataset(cifar_dir, training=False, image_size=64, batch_size=8)
    batch, _ = next(dataset.create_tuple_iterator(output_numpy=True, num_epochs=1))
    raw, _ = read_cifar_bin(os.path.join(cifar_dir, "test_batch.bin"))
    for position in range(8):
        out = eval_transform_image(raw[position], 64)
        assert out.shape == (3, 64, 64) and out.dtype == np.float32
        np.testing.assert_allclose(out, batch[position], atol=1e-6)


def test_predict_transform_brings_any_size_to_cifar_first(cifar_dir):
    raw, _ = read_cifar_bin(os.path.join(cifar_dir, "test_batch.bin"))
    big = raw[0].repeat(7, axis=0).repeat(7, axis=1)  # a 224x224 photo of the same digit
    np.testing.assert_allclose(eval_transform_image(big, 32), eval_transform_image(raw[0], 32), atol=1e-6)
    assert eval_transform_image(np.zeros((20, 50, 3), np.uint8), 48).shape == (3, 48, 48)


@pytest.mark.parametrize("image", [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8),
                                   np.zeros((32, 32, 3), np.float32)])
def test_predict_transform_rejects_non_rgb_uint8(image):
    with pytest.raises(ImageError, match="RGB"):
        eval_transform_image(image, 32)


def test_class_names(cifar_dir, tmp_path):
    assert class_names(cifar_dir) == [str(digit) for digit in range(10)]
    assert class_names(os.path.dirname(cifar_dir)) == [str(digit) for digit in range(10)]
    assert class_names(str(tmp_path / "absent"))[:3] == ["airplane", "automobile", "bird"]
    (tmp_path / "batches.meta.txt").write_text("airplane\nautomobile\n\n")  # CIFAR's trailing blank
    assert class_names(str(tmp_path)) == ["airplane", "automobile"]


# --- validation -------------------------------------------------------------------------------

def _sized(path, size: int = FILE_BYTES) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)


def test_data_dir_is_the_bin_folder_or_its_parent(cifar_dir, tmp_path):
    assert resolve_data_dir(cifar_dir) == cifar_dir
    assert resolve_data_dir(os.path.dirname(cifar_dir)) == cifar_dir
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        resolve_data_dir(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no CIFAR-10 .bin files"):
        resolve_data_dir(str(tmp_path))


def test_missing_train_file_is_named(tmp_path):
    _sized(tmp_path / "test_batch.bin")
    assert validate_split(str(tmp_path), training=False) == [str(tmp_path / "test_batch.bin")]
    with pytest.raises(DataError, match=r"data_batch_1\.bin: no such file"):
        validate_split(str(tmp_path), training=True)


def test_missing_test_file_is_named(tmp_path):
    _sized(tmp_path / "data_batch_1.bin")
    with pytest.raises(DataError, match=r"test_batch\.bin: no such file"):
        validate_split(str(tmp_path), training=False)


def test_truncated_file_is_named_with_its_size(tmp_path):
    for number in (1, 3):
        _sized(tmp_path / f"data_batch_{number}.bin")
    _sized(tmp_path / "data_batch_2.bin", 3_073 * 9_999)
    with pytest.raises(DataError) as caught:
        validate_split(str(tmp_path), training=True)
    message = str(caught.value)
    assert str(tmp_path / "data_batch_2.bin") in message
    assert "30726927 bytes" in message and "30730000" in message
    assert "\n" not in message


def test_all_train_batches_are_read(tmp_path):
    for number in range(1, 6):
        _sized(tmp_path / f"data_batch_{number}.bin")
    files = validate_split(str(tmp_path), training=True)
    assert [os.path.basename(path) for path in files] == [f"data_batch_{n}.bin" for n in range(1, 6)]


def test_create_dataset_reports_bad_data_before_reading(tmp_path, cifar_dir):
    with pytest.raises(DataError, match="missing: no such data folder"):
        create_dataset(str(tmp_path / "missing"), training=True, image_size=32, batch_size=8)
    with pytest.raises(DataError, match="fewer than batch_size 6000"):
        create_dataset(cifar_dir, training=True, image_size=32, batch_size=6000, rank=0, rank_size=2)


# --- download script --------------------------------------------------------------------------

def _download(repo_root, dest, **env_overrides):
    env = {key: value for key, value in os.environ.items() if not key.startswith("CIFAR10_")}
    env.update(env_overrides)
    return subprocess.run(["bash", os.path.join(repo_root, "scripts", "download_cifar10.sh"), str(dest)],
                          env=env, capture_output=True, text=True, timeout=60)


def _tarball(path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    with open(path, "rb") as handle:
        return hashlib.md5(handle.read()).hexdigest()


def test_download_fails_fast_and_cleanly_when_offline(repo_root, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    start = time.monotonic()
    # .invalid never resolves (RFC 2606): the same failure as a machine without internet.
    result = _download(repo_root, dest, CIFAR10_URL="https://cifar.invalid/cifar-10-binary.tar.gz")
    assert time.monotonic() - start < 30
    assert result.returncode == 1
    assert "cannot download" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(dest) == []


def test_download_verifies_md5_and_extracts(repo_root, tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    md5 = _tarball(archive, {"cifar-10-batches-bin/batches.meta.txt": b"airplane\n",
                             "cifar-10-batches-bin/test_batch.bin": b"x" * 100})
    url = archive.as_uri()

    dest = tmp_path / "dest"
    wrong = _download(repo_root, dest, CIFAR10_URL=url)  # checked against the real CIFAR-10 MD5
    assert wrong.returncode == 1 and "MD5" in wrong.stderr
    assert not dest.exists()

    # A stand-in in the way is replaced; a folder of something else is not touched.
    from trainer.standin import make_digits_standin
    make_digits_standin(str(dest))
    good = _download(repo_root, dest, CIFAR10_URL=url, CIFAR10_MD5=md5)
    assert good.returncode == 0, good.stderr
    assert sorted(os.listdir(dest)) == ["cifar-10-batches-bin"]
    assert sorted(os.listdir(dest / "cifar-10-batches-bin")) == ["batches.meta.txt", "test_batch.bin"]

    other = tmp_path / "other"
    (other / "cifar-10-batches-bin").mkdir(parents=True)
    (other / "cifar-10-batches-bin" / "mine.txt").write_text("keep me")
    refused = _download(repo_root, other, CIFAR10_URL=url, CIFAR10_MD5=md5)
    assert refused.returncode == 1 and "move it away" in refused.stderr
    assert os.listdir(other / "cifar-10-batches-bin") == ["mine.txt"]
