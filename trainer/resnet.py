"""ResNet v1.5 (He et al. 2015, with the stride of a bottleneck on its 3x3 conv), as in MindSpore's zoo.

resnet18/34 stack basic blocks (two 3x3 convs), resnet50/101 bottlenecks (1x1, 3x3, 1x1, expansion
4). Convolutions have no bias and are followed by BatchNorm; a 1x1 conv + BatchNorm projects the
shortcut where the shape changes. Stages have ``width``, 2, 4 and 8 x ``width`` channels (x4 at a
bottleneck's output); stages 2-4 halve the resolution. The ``imagenet`` stem is a 7x7/2 conv and a
3x3/2 max-pool (the tutorial's network, for 224x224 inputs); the ``cifar`` stem a 3x3/1 conv without
pooling (for 32x32 inputs). ResNet-50, width 64, 10 classes: 23,528,522 trainable parameters.

Weights are drawn by MindSpore's initializers from numpy's generator, which ``mindspore.set_seed``
seeds: every rank that sets the same seed and then builds the same network gets the same weights.
That matters: data-parallel training does not broadcast the initial weights (measured).
"""
from __future__ import annotations

import math

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore.common.initializer import HeNormal, HeUniform

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
STEMS = ("imagenet", "cifar")
BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # MindSpore's convention: moving = 0.9 * moving + 0.1 * batch statistic


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free conv with symmetric zero padding (kernel // 2) and He-normal (fan-out) weights."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, pad_mode="pad",
                     padding=kernel // 2, has_bias=False,
                     weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.SequentialCell:
    """The shortcut where a block changes shape: a strided 1x1 conv and BatchNorm."""
    return nn.SequentialCell([_conv(in_channels, out_channels, 1, stride), _bn(out_channels)])


class BasicBlock(nn.Cell):
    """Two 3x3 convs (the first strided) around a shortcut: resnet18 and resnet34."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = _conv(in_channels, channels, 3, stride)
        self.bn1 = _bn(channels)
        self.conv2 = _conv(channels, out_channels, 3)
        self.bn2 = _bn(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = (_projection(in_channels, out_channels, stride)
                         if stride != 1 or in_channels != out_channels else None)

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + identity)


class Bottleneck(nn.Cell):
    """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand x4, around a shortcut: resnet50 and resnet101."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = _conv(in_channels, channels, 1)
        self.bn1 = _bn(channels)
        self.conv2 = _conv(channels, channels, 3, stride)
        self.bn2 = _bn(channels)
        self.conv3 = _conv(channels, out_channels, 1)
        self.bn3 = _bn(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = (_projection(in_channels, out_channels, stride)
                         if stride != 1 or in_channels != out_channels else None)

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + identity)


_LAYOUTS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Cell):
    """Stem, four stages of residual blocks, global average pooling, a dense classifier."""

    def __init__(self, block: type, blocks_per_stage: tuple[int, ...], num_classes: int,
                 width: int, stem: str):
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.SequentialCell([
                _conv(3, width, 7, 2), _bn(width), nn.ReLU(),
                nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)])
        else:
            self.stem = nn.SequentialCell([_conv(3, width, 3, 1), _bn(width), nn.ReLU()])
        stages = []
        in_channels = width
        for index, count in enumerate(blocks_per_stage):
            channels = width * 2 ** index
            stride = 1 if index == 0 else 2
            blocks = []
            for position in range(count):
                blocks.append(block(in_channels, channels, stride if position == 0 else 1))
                in_channels = channels * block.expansion
            stages.append(nn.SequentialCell(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # PyTorch's default for a dense layer (the zoo's too): He-uniform with a = sqrt(5); bias 0.
        self.fc = nn.Dense(in_channels, num_classes, has_bias=True,
                           weight_init=HeUniform(negative_slope=math.sqrt(5)), bias_init="zeros")

    def construct(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = ops.mean(x, (2, 3), keep_dims=False)  # global average pooling
        return self.fc(x)


def build_resnet(arch: str, num_classes: int = 10, width: int = 64, stem: str = "imagenet") -> nn.Cell:
    """Build a ResNet v1.5 whose logits have ``num_classes`` columns.

    Args:
        arch: resnet18, resnet34, resnet50 or resnet101.
        num_classes: outputs of the classifier.
        width: channels of the first stage (64 is the standard ResNet).
        stem: ``imagenet`` (7x7/2 conv + 3x3/2 max-pool) or ``cifar`` (3x3/1 conv, no pool).

    Raises:
        ValueError: an unknown arch or stem, or a non-positive width or class count (the
            settings layer validates these for users; this guards programming errors).
    """
    if arch not in _LAYOUTS:
        raise ValueError(f"arch: expected one of {', '.join(ARCHS)}, got {arch!r}")
    if stem not in STEMS:
        raise ValueError(f"stem: expected one of {', '.join(STEMS)}, got {stem!r}")
    if width < 1 or num_classes < 1:
        raise ValueError(f"width and num_classes must be positive, got {width} and {num_classes}")
    block, blocks_per_stage = _LAYOUTS[arch]
    return ResNet(block, blocks_per_stage, num_classes, width, stem)


def count_parameters(net: nn.Cell) -> int:
    """The number of trainable scalars (weights, biases, BatchNorm gamma and beta)."""
    return sum(math.prod(param.shape) for param in net.trainable_params())
