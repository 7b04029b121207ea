"""PyTorch DDP peer of scripts/bench_dp.py: the same ResNet v1.5 step as ../shared/bench/torch_peer.py
(the network below is copied from it, unchanged), data-parallel through torchrun and gloo.

    .venv-torch/bin/torchrun --standalone --nproc-per-node 2 scripts/torch_ddp_peer.py --batch 16 ...
    .venv-torch/bin/python scripts/torch_ddp_peer.py --batch 32 ...      # one process, no DDP

Protocol (torch_peer.py's): one fixed random batch per rank (seeded by rank), SGD momentum 0.9,
weight decay 1e-4, lr 0.01, ``warmup`` untimed steps, then ``steps`` timed steps; every step reads
the loss back. Each rank gets cores / ranks threads (as mscluster's agent splits the cores) and is
pinned to its share. Rank 0 prints one JSON line: the job's img/s (every rank's images).
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch import nn


def conv(cin, cout, k, s=1):
    m = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return m


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, c, s=1):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, c, 3, s), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = conv(c, c, 3), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if s != 1 or cin != c:
            self.down = nn.Sequential(conv(cin, c, 1, s), nn.BatchNorm2d(c))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, c, s=1):
        super().__init__()
        cout = c * 4
        self.conv1, self.bn1 = conv(cin, c, 1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = conv(c, c, 3, s), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = conv(c, cout, 1), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if s != 1 or cin != cout:
            self.down = nn.Sequential(conv(cin, cout, 1, s), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet(nn.Module):
    def __init__(self, block, layers, class_num=10, width=64):
        super().__init__()
        self.conv1, self.bn1 = conv(3, width, 7, 2), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = width, []
        for i, n in enumerate(layers):
            c = width * (2 ** i)
            blocks = []
            for j in range(n):
                blocks.append(block(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, class_num)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def build(arch="resnet50", class_num=10, width=64):
    if arch == "resnet50":
        return ResNet(Bottleneck, [3, 4, 6, 3], class_num, width)
    if arch == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2], class_num, width)
    raise ValueError(arch)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="images per rank per step")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    a = p.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cores = sorted(os.sched_getaffinity(0))
    share = max(len(cores) // world, 1)
    mine = cores[rank * share:(rank + 1) * share] or cores
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(1)  # the same initial weights on every rank (DDP broadcasts them anyway)
    net = build(a.arch, 10, a.width).train()
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    lossf = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(a.batch, 3, a.size, a.size, generator=g)
    y = torch.randint(0, 10, (a.batch,), generator=g)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if world > 1:
        dist.barrier()
    dt = time.perf_counter() - t0
    if rank == 0:
        print(json.dumps({"fw": "torch", "ver": torch.__version__, "ranks": world, "arch": a.arch, "size": a.size,
                          "batch_per_rank": a.batch, "threads_per_rank": len(mine), "steps": a.steps,
                          "s_per_step": round(dt / a.steps, 4),
                          "img_per_s": round(a.batch * world * a.steps / dt, 2)}), flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
