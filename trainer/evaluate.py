"""Evaluate a saved checkpoint on the test split, and predict the class of image files."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from trainer import checkpoint as ckpt
from trainer.config import from_dict
from trainer.errors import CheckpointError, ImageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Scores over a whole split (all ranks' shards together)."""

    top1: float
    loss: float  # mean softmax cross-entropy per image
    count: int
    confusion: np.ndarray  # [true class, predicted class] -> images

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1, "loss": self.loss}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def run_eval(net, dataset, num_classes: int,
             allreduce: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> EvalResult:
    """Evaluate ``net`` on ``dataset`` (this rank's shard); sum the counts over ranks with ``allreduce``.

    Every rank evaluates its own shard at the same time, so no rank idles in a collective while
    another evaluates (a CPU allreduce times out after about 30 s of waiting: measured).
    """
    import mindspore as ms

    was_training = net.training
    net.set_train(False)
    correct = 0.0
    loss_sum = 0.0
    count = 0.0
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    try:
        for batch in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
            images, labels = batch[0], batch[1].astype(np.int64)
            logits = net(ms.Tensor(images)).asnumpy().astype(np.float64)
            log_probs = _log_softmax(logits)
            predicted = logits.argmax(axis=1)
            correct += float((predicted == labels).sum())
            loss_sum += float(-log_probs[np.arange(labels.size), labels].sum())
            count += labels.size
            np.add.at(confusion, (labels, predicted), 1.0)
    finally:
        net.set_train(was_training)
    totals = np.concatenate([[correct, loss_sum, count], confusion.ravel()])
    if allreduce is not None:
        totals = allreduce(totals)
    correct, loss_sum, count = totals[:3]
    if count <= 0:
        raise ValueError("the evaluation split is empty")
    return EvalResult(float(correct / count), float(loss_sum / count), int(round(count)),
                      np.rint(totals[3:]).astype(np.int64).reshape(num_classes, num_classes))


@dataclass(frozen=True)
class Prediction:
    image: str
    class_index: int
    class_name: str
    probability: float


def load_network(path: str):
    """Verify a checkpoint against its sidecar, rebuild its network from the saved config, load weights.

    Returns:
        (network in inference mode, CheckpointMeta)

    Raises:
        CheckpointError: missing, corrupt, or not loadable into the network its sidecar describes.
    """
    try:
        params, meta = ckpt.load_verified(path)  # the very bytes whose SHA-256 the sidecar vouches for
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: MindSpore cannot read it ({str(exc).splitlines()[0]})") from None
    import mindspore as ms

    from trainer.resnet import build_resnet

    cfg = from_dict(meta.config, source=ckpt.sidecar_path(path))
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == "graph" else ms.PYNATIVE_MODE, device_target="CPU")
    net = build_resnet(cfg.arch, num_classes=cfg.num_classes, width=cfg.width, stem=cfg.stem)
    weights = {k: v for k, v in params.items() if not k.startswith("moments.")}
    missing, _ = ms.load_param_into_net(net, weights)
    if missing:
        raise CheckpointError(f"{path}: no value for {', '.join(missing[:5])}")
    net.set_train(False)
    return net, meta


def evaluate(path: str, data_dir: str, batch_size: int = 0, images: int = 0) -> EvalResult:
    """Top-1 accuracy and mean loss of a checkpoint over the test split (its first ``images``; 0: all)."""
    from trainer.data import create_dataset, resolve_data_dir, validate_split

    folder = resolve_data_dir(data_dir)
    validate_split(folder, training=False)
    net, meta = load_network(path)
    cfg = from_dict(meta.config)
    dataset = create_dataset(folder, training=False, image_size=cfg.image_size,
                             batch_size=batch_size or cfg.batch_size, images=images)
    return run_eval(net, dataset, cfg.num_classes)


def read_image(path: str) -> np.ndarray:
    """An image file (PNG, JPEG, anything Pillow reads) as uint8 RGB (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None


def predict(path: str, images: Sequence[str]) -> list[Prediction]:
    """The most likely class of each image, with its softmax probability."""
    from trainer.data import eval_transform_image

    arrays = [read_image(image) for image in images]  # fail on a bad image before loading the net
    net, meta = load_network(path)
    import mindspore as ms
    cfg = from_dict(meta.config)
    names = meta.class_names or [str(i) for i in range(cfg.num_classes)]
    batch = np.stack([eval_transform_image(a, cfg.image_size) for a in arrays])
    logits = net(ms.Tensor(batch)).asnumpy().astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    out = []
    for image, row in zip(images, probs):
        k = int(row.argmax())
        out.append(Prediction(image, k, names[k] if k < len(names) else str(k), float(row[k])))
    return out
