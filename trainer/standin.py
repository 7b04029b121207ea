"""A small real dataset in CIFAR-10's binary format, for machines that cannot download CIFAR-10.

The images are scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, 16 grey levels),
upscaled to 32x32 by pixel repetition, scaled to 0..255 and copied to R, G and B. Labels are the
digits 0..9, so class names are "0".."9". ``mindspore.dataset.Cifar10Dataset`` only reads files of
exactly 10,000 records (measured), so each file is padded by cycling its own split's images.

Run ``python -m trainer.standin OUT_DIR`` to write ``OUT_DIR/cifar-10-batches-bin/``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from trainer.errors import DataError

logger = logging.getLogger(__name__)

BATCHES_DIR = "cifar-10-batches-bin"
MARKER = "STANDIN"  # present only in folders this module wrote; they may be replaced
RECORDS_PER_FILE = 10_000  # Cifar10Dataset rejects files of any other length
IMAGE_SIDE = 32
RECORD_BYTES = 1 + 3 * IMAGE_SIDE * IMAGE_SIDE  # 1 label byte, then 1024 R, 1024 G, 1024 B


@dataclass(frozen=True)
class StandinInfo:
    """Where a stand-in was written and how many distinct images each split holds."""

    dir: str  # the folder holding the .bin files (.../cifar-10-batches-bin)
    train_count: int  # distinct training images (data_batch_1.bin repeats them to 10,000 records)
    test_count: int  # distinct test images (test_batch.bin repeats them to 10,000 records)


def write_cifar_bin(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write records in CIFAR-10 binary layout: a label byte, then R, G, B planes, row-major.

    Args:
        path: the file to write (replaced if it exists).
        images: uint8 array of shape (N, 32, 32, 3), RGB.
        labels: N integers in 0..255.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE, 3):
        raise ValueError(f"images must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"labels must be N={images.shape[0]} integers in 0..255, got shape {labels.shape}")
    records = np.empty((images.shape[0], RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels.astype(np.uint8)
    records[:, 1:] = images.transpose(0, 3, 1, 2).reshape(images.shape[0], -1)  # HWC -> CHW planes
    with open(path, "wb") as handle:
        handle.write(records.tobytes())


def read_cifar_bin(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR-10 binary file: (uint8 images (N, 32, 32, 3) RGB, uint8 labels (N,)).

    Raises:
        DataError: the file is missing or its size is not a whole number of records.
    """
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte records")
    records = raw.reshape(-1, RECORD_BYTES)
    images = records[:, 1:].reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].copy()


def _digits_as_cifar() -> tuple[np.ndarray, np.ndarray]:
    """load_digits as uint8 (N, 32, 32, 3) RGB images and their labels."""
    from sklearn.datasets import load_digits  # test-only dependency: import where used

    digits = load_digits()
    grey = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 -> 0..255
    scale = IMAGE_SIDE // grey.shape[1]
    big = grey.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.repeat(big[..., None], 3, axis=3), digits.target.astype(np.uint8)


def _cycled(images: np.ndarray, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.resize(np.arange(images.shape[0]), count)
    return images[order], labels[order]


def _check_replaceable(target: str) -> None:
    """Refuse to replace a folder that holds files unless this module wrote it."""
    if os.path.lexists(target) and not os.path.isdir(target):
        raise DataError(f"{target}: exists and is not a folder; refusing to replace it with a stand-in")
    if os.path.isdir(target) and os.listdir(target) and not os.path.isfile(os.path.join(target, MARKER)):
        raise DataError(f"{target}: holds files that are not a stand-in (no {MARKER} marker); "
                        "refusing to overwrite a real dataset")


def make_digits_standin(out_dir: str, test_fraction: float = 0.2, seed: int = 0) -> StandinInfo:
    """Write a CIFAR-10-format stand-in built from scikit-learn's digits into ``out_dir``.

    The digits are split once, at random with ``seed``, into disjoint train and test images.
    Each split is padded to exactly 10,000 records by cycling its own images (image i of the
    split appears at records i, i + n, i + 2n, ...), because Cifar10Dataset reads only
    10,000-record files. Writes ``data_batch_1.bin``, ``test_batch.bin``, ``batches.meta.txt``
    (names "0".."9") and a ``STANDIN`` marker into ``out_dir/cifar-10-batches-bin/``, first into
    a temporary folder that is then renamed into place.

    Raises:
        DataError: ``out_dir/cifar-10-batches-bin`` holds files that are not a stand-in.
        ValueError: ``test_fraction`` leaves either split empty.
    """
    target = os.path.join(out_dir, BATCHES_DIR)
    _check_replaceable(target)
    images, labels = _digits_as_cifar()
    test_count = int(round(images.shape[0] * test_fraction))
    if not 0 < test_count < images.shape[0]:
        raise ValueError(f"test_fraction {test_fraction} leaves an empty split of {images.shape[0]} images")
    order = np.random.default_rng(seed).permutation(images.shape[0])
    test_idx, train_idx = order[:test_count], order[test_count:]

    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{BATCHES_DIR}.", dir=out_dir)
    try:
        write_cifar_bin(os.path.join(staging, "data_batch_1.bin"),
                        *_cycled(images[train_idx], labels[train_idx], RECORDS_PER_FILE))
        write_cifar_bin(os.path.join(staging, "test_batch.bin"),
                        *_cycled(images[test_idx], labels[test_idx], RECORDS_PER_FILE))
        with open(os.path.join(staging, "batches.meta.txt"), "w", encoding="ascii") as handle:
            handle.write("".join(f"{digit}\n" for digit in range(10)))
        with open(os.path.join(staging, MARKER), "w", encoding="ascii") as handle:
            handle.write(f"scikit-learn load_digits stand-in, seed={seed}, test_fraction={test_fraction}\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700
        _check_replaceable(target)  # again: something may have appeared while we wrote
        old = None
        if os.path.isdir(target):  # an older stand-in (checked above) or an empty folder
            old = tempfile.mkdtemp(prefix=f".{BATCHES_DIR}.old.", dir=out_dir)
            os.rename(target, os.path.join(old, BATCHES_DIR))
        os.rename(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote a digits stand-in to %s (%d train, %d test images)", target, train_idx.size, test_count)
    return StandinInfo(dir=target, train_count=int(train_idx.size), test_count=test_count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.standin",
        description="Write a CIFAR-10-format stand-in (scikit-learn digits) into OUT_DIR/cifar-10-batches-bin.")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        info = make_digits_standin(args.out_dir, test_fraction=args.test_fraction, seed=args.seed)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {info.dir} ({info.train_count} train, {info.test_count} test images, "
          f"each split cycled to {RECORDS_PER_FILE} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
