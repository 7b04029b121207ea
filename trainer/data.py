"""CIFAR-10 (binary version) input pipelines, as in the MindSpore ResNet-50 tutorial.

Train: RandomCrop 32 with 4 pixels of zero padding, RandomHorizontalFlip, Resize to ``image_size``
(bilinear), Rescale 1/255, Normalize with CIFAR-10's per-channel mean and std, HWC2CHW; labels cast
to int32; shuffled, sharded by rank, batched with the remainder dropped. Eval: the same without the
random ops, in file order, keeping the last partial batch so every test image counts.

Every rank must shuffle with the SAME seed: each rank draws its shard from one global permutation,
so equal seeds give disjoint shards that cover the data every epoch; unequal seeds overlap
(measured here). MindSpore's DistributedSampler reads that seed from ``ds.config`` when it is built and
reshuffles from it every epoch, so the order is a pure function of (seed, epoch) on every rank.
A fresh pipeline starts again from the first epoch's order.
"""
from __future__ import annotations

import glob
import logging
import math
import os
from typing import TYPE_CHECKING, Optional

import numpy as np

from trainer.errors import DataError, ImageError

if TYPE_CHECKING:
    import mindspore.dataset

logger = logging.getLogger(__name__)

BATCHES_DIR = "cifar-10-batches-bin"
RECORDS_PER_FILE = 10_000
RECORD_BYTES = 3_073  # 1 label byte + 32 x 32 x 3 pixel bytes
FILE_BYTES = RECORDS_PER_FILE * RECORD_BYTES  # Cifar10Dataset reads no other length (measured)
CIFAR_SIDE = 32
MEAN = (0.4914, 0.4822, 0.4465)  # per channel, of images rescaled to 0..1 (the tutorial's values)
STD = (0.2023, 0.1994, 0.2010)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_SPLITS = {True: ("data_batch", "data_batch_1.bin ... data_batch_5.bin"),
           False: ("test_batch", "test_batch.bin")}
_HINT = "expected CIFAR-10's binary version, cifar-10-binary.tar.gz: see scripts/download_cifar10.sh"


def resolve_data_dir(path: str) -> str:
    """Return the folder holding the .bin files: ``path`` itself or ``path/cifar-10-batches-bin``.

    Raises:
        DataError: ``path`` is not a folder, or neither it nor its ``cifar-10-batches-bin``
            holds any .bin file.
    """
    if not os.path.isdir(path):
        problem = "not a folder" if os.path.exists(path) else "no such data folder"
        raise DataError(f"{path}: {problem} ({_HINT})")
    if glob.glob(os.path.join(glob.escape(path), "*.bin")):
        return path
    nested = os.path.join(path, BATCHES_DIR)
    if os.path.isdir(nested):
        return nested
    raise DataError(f"{path}: no CIFAR-10 .bin files here or in {BATCHES_DIR}/ ({_HINT})")


def validate_split(data_dir: str, training: bool) -> list[str]:
    """Check the files one split needs and return their paths, sorted.

    Train reads every ``*data_batch*.bin`` (the five of CIFAR-10, or a subset such as the
    stand-in's ``data_batch_1.bin``); test reads ``*test_batch*.bin``: the same files
    Cifar10Dataset selects. Each must be exactly 10,000 records of 3,073 bytes.

    Raises:
        DataError: the folder is missing, the split has no file, or a file has the wrong size;
            the message names the folder or file.
    """
    folder = resolve_data_dir(data_dir)
    stem, expected = _SPLITS[training]
    files = sorted(path for path in glob.glob(os.path.join(glob.escape(folder), f"*{stem}*.bin"))
                   if os.path.isfile(path))
    if not files:
        first = "data_batch_1.bin" if training else "test_batch.bin"
        raise DataError(f"{os.path.join(folder, first)}: no such file "
                        f"(the {'train' if training else 'test'} split needs {expected})")
    for path in files:
        size = os.path.getsize(path)
        if size != FILE_BYTES:
            raise DataError(f"{path}: {size} bytes, expected {FILE_BYTES} "
                            f"({RECORDS_PER_FILE} records of {RECORD_BYTES} bytes; {_HINT})")
    return files


def _image_ops(training: bool, image_size: int) -> list:
    """The tutorial's image transforms, in order; Resize is left out when it would be identity."""
    from mindspore.dataset import vision

    ops = []
    if training:
        ops += [vision.RandomCrop((CIFAR_SIDE, CIFAR_SIDE), (4, 4, 4, 4)),  # zero padding
                vision.RandomHorizontalFlip()]
    if image_size != CIFAR_SIDE:
        ops.append(vision.Resize((image_size, image_size), vision.Inter.LINEAR))
    ops += [vision.Rescale(1.0 / 255.0, 0.0),
            vision.Normalize(MEAN, STD),
            vision.HWC2CHW()]
    return ops


def create_dataset(data_dir: str, *, training: bool, image_size: int, batch_size: int,
                   rank: int = 0, rank_size: int = 1, seed: int = 1, num_parallel_workers: int = 1,
                   shuffle: Optional[bool] = None, images: int = 0) -> "mindspore.dataset.Dataset":
    """Build the CIFAR-10 pipeline of one rank: batches of (float32 N x 3 x S x S, int32 N).

    Args:
        data_dir: the folder of the .bin files, or its parent.
        training: the train split with random crop/flip and drop_remainder, or the test split.
        image_size: side of the images the network sees (32 skips Resize).
        batch_size: images per batch on this rank.
        rank, rank_size: this rank's shard of the data (shard ``rank`` of ``rank_size``).
        seed: shuffle and augmentation seed; MUST be the same on every rank so the shards are
            disjoint. When shuffling or training, sets MindSpore's process-wide dataset seed
            (``ds.config.set_seed``, which also reseeds ``random`` and ``numpy.random``, as
            ``mindspore.set_seed`` does): a network built after this call draws its initial
            weights from this seed, so build it first (or pass the same seed on every rank).
        num_parallel_workers: reader and map workers.
        shuffle: None = shuffle when training only.
        images: > 0: only the split's first ``images`` images, over every rank together (unshuffled,
            each shard's share of them: shards interleave, image i on rank i % rank_size), and at
            least one a rank.

    Raises:
        DataError: the split's files are missing or malformed, or a training shard holds fewer
            images than one batch.
        ValueError: ``rank`` is outside ``0..rank_size - 1`` (a launcher bug, not user input).
    """
    if not 0 <= rank < rank_size:
        raise ValueError(f"rank {rank} is outside 0..{rank_size - 1}")
    files = validate_split(data_dir, training)
    folder = os.path.dirname(files[0])
    shard_images = math.ceil(len(files) * RECORDS_PER_FILE / rank_size)
    if training and shard_images < batch_size:
        raise DataError(f"{folder}: {shard_images} training images per rank ({rank_size} ranks) "
                        f"is fewer than batch_size {batch_size}")

    import mindspore as ms
    import mindspore.dataset as ds
    from mindspore.dataset import transforms

    if shuffle is None:
        shuffle = training
    if shuffle or training:  # a sequential eval pipeline draws no random numbers: leave the seed be
        ds.config.set_seed(seed)  # read by the sampler below when it is built: the same on every rank
    # per shard (MindSpore's num_samples counts a shard's own): the ones of the first `images` it holds
    share = max(1, -(-(images - rank) // rank_size)) if images > 0 else None
    dataset = ds.Cifar10Dataset(folder, usage="train" if training else "test",
                                num_parallel_workers=num_parallel_workers, shuffle=shuffle,
                                num_shards=rank_size, shard_id=rank, num_samples=share)
    dataset = dataset.map(operations=transforms.TypeCast(ms.int32), input_columns="label",
                          num_parallel_workers=num_parallel_workers)
    dataset = dataset.map(operations=_image_ops(training, image_size), input_columns="image",
                          num_parallel_workers=num_parallel_workers)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    logger.debug("%s pipeline: %s, shard %d of %d, %d images per shard, batch %d, image %d, seed %d",
                 "train" if training else "eval", folder, rank, rank_size, shard_images, batch_size,
                 image_size, seed)
    return dataset


def eval_transform_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """Turn one RGB image of any size into the network's input, exactly as the eval pipeline does.

    The image is first brought to CIFAR's 32x32 (pixel-area averaging when shrinking, bilinear
    when growing), then goes through the eval transforms with the same MindSpore ops, run eagerly.

    Args:
        image: uint8 array (H, W, 3), RGB.
        image_size: the side the network was trained on.

    Returns:
        float32 array (3, image_size, image_size).

    Raises:
        ImageError: ``image`` is not a uint8 (H, W, 3) array.
    """
    from mindspore.dataset import transforms, vision

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ImageError(f"expected an RGB image as uint8 (H, W, 3), got {image.dtype} {image.shape}")
    ops = []
    if image.shape[:2] != (CIFAR_SIDE, CIFAR_SIDE):
        shrinking = min(image.shape[:2]) >= CIFAR_SIDE
        ops.append(vision.Resize((CIFAR_SIDE, CIFAR_SIDE),
                                 vision.Inter.AREA if shrinking else vision.Inter.LINEAR))
    ops += _image_ops(False, image_size)
    out = transforms.Compose(ops)(np.ascontiguousarray(image))
    return np.asarray(out, dtype=np.float32)


def class_names(data_dir: str) -> list[str]:
    """The class names from ``batches.meta.txt`` (one per line) if present, else CIFAR-10's ten.

    ``data_dir`` may be the folder of the .bin files or its parent; a missing folder is not an
    error (``predict`` may run where the dataset is absent).
    """
    for folder in (data_dir, os.path.join(data_dir, BATCHES_DIR)):
        meta = os.path.join(folder, "batches.meta.txt")
        if os.path.isfile(meta):
            with open(meta, encoding="utf-8", errors="replace") as handle:
                names = [line.strip() for line in handle if line.strip()]
            if names:
                return names
            logger.warning("%s: no class names in it; using CIFAR-10's", meta)
    return list(CIFAR10_CLASSES)
