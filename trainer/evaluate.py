"""Evaluate a saved checkpoint on the test split, and predict the class of image files."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from trainer import checkpoint as ckpt
from trainer.config import from_dict
from trainer.errors import CheckpointError, ImageError

logger = logging.getLogger(__name__)


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
    import mindspore as ms

    from trainer.resnet import build_resnet

    meta = ckpt.verify(path)
    cfg = from_dict(meta.config, source=ckpt.sidecar_path(path))
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == "graph" else ms.PYNATIVE_MODE, device_target="CPU")
    net = build_resnet(cfg.arch, num_classes=cfg.num_classes, width=cfg.width, stem=cfg.stem)
    try:
        params = ms.load_checkpoint(path, net=None)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: MindSpore cannot read it ({str(exc).splitlines()[0]})") from None
    weights = {k: v for k, v in params.items() if not k.startswith("moments.")}
    missing, _ = ms.load_param_into_net(net, weights)
    if missing:
        raise CheckpointError(f"{path}: no value for {', '.join(missing[:5])}")
    net.set_train(False)
    return net, meta


def evaluate(path: str, data_dir: str, batch_size: int = 0) -> dict[str, float]:
    """Top-1 accuracy and mean loss of a checkpoint over the whole test split."""
    from mindspore import nn
    from mindspore.train import Model
    from mindspore.train.metrics import Accuracy, Loss

    from trainer.data import create_dataset, resolve_data_dir, validate_split

    folder = resolve_data_dir(data_dir)
    validate_split(folder, training=False)
    net, meta = load_network(path)
    cfg = from_dict(meta.config)
    dataset = create_dataset(folder, training=False, image_size=cfg.image_size,
                             batch_size=batch_size or cfg.batch_size)
    model = Model(net, loss_fn=nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                  metrics={"top1": Accuracy(), "loss": Loss()})
    scores = model.eval(dataset, dataset_sink_mode=False)
    return {"top1": float(scores["top1"]), "loss": float(scores["loss"])}


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
    import mindspore as ms

    from trainer.data import eval_transform_image

    arrays = [read_image(image) for image in images]  # fail on a bad image before loading the net
    net, meta = load_network(path)
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
