"""ResNet v1.5 builder (shapes, parameter counts, seeded init) and the CPU back-end setting."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from trainer.cpu import ISA_VARIABLE, configure_cpu_backend
from trainer.resnet import ARCHS, build_resnet, count_parameters

# torchvision's counts with a 10-class head (the same architectures): what users compare against.
STANDARD_PARAMETERS = {
    "resnet18": 11_181_642,
    "resnet34": 21_289_802,
    "resnet50": 23_528_522,
    "resnet101": 42_520_650,
}


def test_resnet50_has_the_standard_parameter_count():
    assert count_parameters(build_resnet("resnet50", num_classes=10, width=64, stem="imagenet")) == 23_528_522


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "resnet50"])
def test_other_archs_have_the_standard_parameter_counts(arch):
    assert count_parameters(build_resnet(arch)) == STANDARD_PARAMETERS[arch]


def test_width_and_stem_change_the_network():
    standard = count_parameters(build_resnet("resnet18"))
    # The cifar stem swaps the 7x7 conv (64*3*49 weights) for a 3x3 one (64*3*9).
    assert count_parameters(build_resnet("resnet18", stem="cifar")) == standard - 64 * 3 * 40
    # Convolution weights scale with width squared: a quarter width is about 1/16 the size.
    assert count_parameters(build_resnet("resnet18", width=16)) < standard / 12


@pytest.mark.parametrize("arch, stem, size", [
    ("resnet18", "cifar", 32),
    ("resnet34", "cifar", 32),
    ("resnet50", "imagenet", 64),
    ("resnet101", "imagenet", 32),
])
def test_small_networks_build_and_give_one_logit_per_class(arch, stem, size):
    net = build_resnet(arch, num_classes=7, width=8, stem=stem)
    net.set_train(False)
    images = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    logits = net(images).asnumpy()
    print(f"{arch} {stem} width 8: {count_parameters(net)} parameters, logits {logits.shape}")
    assert logits.shape == (2, 7)
    assert np.all(np.isfinite(logits))


def test_bottleneck_downsamples_on_the_3x3_conv():
    """v1.5: the stride of a stage's first bottleneck sits on its 3x3 conv, not the 1x1."""
    block = build_resnet("resnet50", width=8).layer2[0]
    assert block.conv1.kernel_size == (1, 1) and block.conv1.stride == (1, 1)
    assert block.conv2.kernel_size == (3, 3) and block.conv2.stride == (2, 2)
    assert block.shortcut[0].stride == (2, 2)


def _weights_digest(net: nn.Cell) -> str:
    digest = hashlib.sha256()
    for param in net.get_parameters():  # every parameter, BatchNorm statistics included
        digest.update(param.name.encode())
        digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()


_BUILD_IN_CHILD = """
import hashlib, sys
from trainer.cpu import configure_cpu_backend
configure_cpu_backend()
import mindspore as ms
from trainer.resnet import build_resnet
ms.set_seed(7)
net = build_resnet("resnet18", width=8, stem="cifar")
digest = hashlib.sha256()
for param in net.get_parameters():
    digest.update(param.name.encode())
    digest.update(param.asnumpy().tobytes())
print(digest.hexdigest())
"""


def test_same_seed_gives_identical_weights_in_every_process(repo_root):
    """Ranks do not broadcast their initial weights: each must build the same ones from the seed."""
    ms.set_seed(7)
    first = _weights_digest(build_resnet("resnet18", width=8, stem="cifar"))
    ms.set_seed(7)
    assert _weights_digest(build_resnet("resnet18", width=8, stem="cifar")) == first
    ms.set_seed(8)
    assert _weights_digest(build_resnet("resnet18", width=8, stem="cifar")) != first

    child = subprocess.run([sys.executable, "-c", _BUILD_IN_CHILD], cwd=repo_root,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip().splitlines()[-1] == first


def test_a_small_network_learns_a_fixed_batch(cifar_dir):
    """Gradients flow through every block: a few steps on one batch of digits lower the loss."""
    from trainer.standin import read_cifar_bin

    images, labels = read_cifar_bin(os.path.join(cifar_dir, "data_batch_1.bin"))
    x = ms.Tensor(((images[:32].astype(np.float32) / 255.0) - 0.5).transpose(0, 3, 1, 2))
    y = ms.Tensor(labels[:32].astype(np.int32))
    ms.set_seed(1)
    net = build_resnet("resnet18", width=8, stem="cifar")
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn), nn.Momentum(net.trainable_params(), 0.01, 0.9))
    step.set_train()
    losses = [float(step(x, y).asnumpy()) for _ in range(10)]
    assert losses[-1] < 0.85 * losses[0], losses


# --- CPU back end -------------------------------------------------------------------------------

def test_cpu_backend_caps_onednn_at_avx2_on_x86_only():
    environ: dict[str, str] = {}
    configure_cpu_backend(environ, machine="x86_64")
    assert environ == {ISA_VARIABLE: "AVX2"}

    arm: dict[str, str] = {}
    configure_cpu_backend(arm, machine="aarch64")
    assert arm == {}


def test_cpu_backend_keeps_the_users_choice():
    environ = {ISA_VARIABLE: "AVX512_CORE"}
    configure_cpu_backend(environ, machine="x86_64")
    assert environ == {ISA_VARIABLE: "AVX512_CORE"}


_CONV_IN_CHILD = """
import sys
from trainer.cpu import configure_cpu_backend
configure_cpu_backend()
assert "mindspore" not in sys.modules
import numpy as np, mindspore as ms
from mindspore import nn
nn.Conv2d(8, 8, 3, pad_mode="pad", padding=1)(ms.Tensor(np.ones((1, 8, 8, 8), np.float32)))
"""


def test_configured_process_gets_a_fast_convolution_kernel(repo_root):
    """Without the cap, oneDNN runs convolutions with its slow reference kernel on AVX-512 CPUs."""
    env = {k: v for k, v in os.environ.items() if k != ISA_VARIABLE}
    env["ONEDNN_VERBOSE"] = "1"
    child = subprocess.run([sys.executable, "-c", _CONV_IN_CHILD], cwd=repo_root, env=env,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    convs = [line for line in (child.stdout + child.stderr).splitlines()
             if line.startswith("onednn_verbose") and ",exec," in line and ",convolution," in line]
    if not convs:
        pytest.skip("this MindSpore build prints no oneDNN verbose lines")
    implementations = {line.split(",")[6] for line in convs}
    assert not any("ref" in impl for impl in implementations), implementations
