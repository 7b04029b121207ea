#!/usr/bin/env python3
"""Benchmark what monitoring costs a training step: TensorBoard on against off, and the event channel.

Hardware this was written and first run on: 2 vCPUs (x86-64, AVX-512), 24 GiB, no GPU/NPU;
mindspore 2.10.0 CPU, Python 3.11; other sessions were using the same 2 cores, which is why the
two cases alternate step by step in one training run (drift and other processes hit both alike)
and why the direct cost of the TensorBoard calls is measured on its own as well.

Each case is the trainer's path: ``mindspore.train.Model.train`` (dataset_sink_mode=False) over
trainer.data.create_dataset on a CIFAR-format stand-in, with the trainer's StepMonitor callback:
  ``off``  StepMonitor(tensorboard_dir=None): loss read-back and a plain line every 10 steps;
  ``on``   the same plus TensorBoard: 5-6 scalars and a flush per step, the system sampler thread
           (every 5 s), the config text.
One Model.train run alternates them: odd steps end with the ``on`` monitor, even steps with
``off``; a step's time is the gap from the previous step's end to its own (data loading, compute
and its monitor's work), so each case's mean is the step time it would have on its own. ``overhead_pct`` = (on - off) / off of the mean step time; the
``direct`` figure is the time of the per-step TensorBoard calls alone (add_scalars + flush,
10,000 times) as a share of the ``off`` median step: an upper bound free of scheduling noise.
Target: < 2 %.

The event channel (``mscluster.rank.report``, every step, as the trainer sends it): ``channel``
times 20,000 reports in a child process writing to a real pipe, while this process reads them as
the host's agent does (decode, validate, re-encode for the launcher); both sides' microseconds per
event are given as a share of the ``off`` median step. Target: < 1 %.

Usage: .venv/bin/python scripts/bench_monitoring.py [--model small|resnet50|both] [--steps N]
Prints one JSON document. ``--model both`` takes about 3 minutes here.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

MODELS = {  # name: (arch, width, stem, image size, batch, timed steps)
    "small": ("resnet18", 16, "cifar", 32, 32, 300),  # one pass over the stand-in: 312 batches
    "resnet50": ("resnet50", 64, "imagenet", 32, 32, 160),
}


def _direct_cost_us(tmp: str, rank0: bool = True, n: int = 10_000) -> float:
    """Microseconds per step of the TensorBoard calls StepMonitor makes each step."""
    from trainer.monitor import EventWriter

    writer = EventWriter(os.path.join(tmp, "direct"), purge_step=1)
    tags = ["train/loss", "train/lr", "train/step_time_ms", "train/data_wait_ms", "train/throughput_img_per_s"]
    if rank0:
        tags.append("train/throughput_img_per_s_job")
    t0 = time.perf_counter()
    for step in range(1, n + 1):
        writer.add_scalars({tag: 1.0 + step for tag in tags}, step)
        writer.flush()
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed / n * 1e6


CHANNEL_CHILD = """
import sys, time
from mscluster.rank import report
n = int(sys.argv[1])
t0 = time.perf_counter()
for step in range(1, n + 1):  # what trainer.callbacks.StepMonitor sends after every step
    report(step, epoch=1, loss=2.3, lr=0.1, img_per_s=512.0, epochs=90, step_in_epoch=step, steps_per_epoch=1563)
print(time.perf_counter() - t0)
"""


def _channel_cost_us(n: int = 20_000) -> dict[str, float]:
    """Microseconds per event: the rank's report() into a pipe, and the agent's read + relay of it."""
    import subprocess

    from launcher.protocol import Relayed, encode_message
    from mscluster import events

    read_end, write_end = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", CHANNEL_CHILD, str(n)], pass_fds=(write_end,),
                             env={**os.environ, "MSCLUSTER_EVENT_FD": str(write_end), "PYTHONPATH": REPO_ROOT},
                             stdout=subprocess.PIPE, text=True)
    os.close(write_end)
    got, pending, cpu0 = 0, b"", time.process_time()
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            encode_message(Relayed("rank0", events.decode(line)))
            got += 1
    agent_cpu = time.process_time() - cpu0
    os.close(read_end)
    rank_s = float(child.communicate()[0])
    if got != n:
        raise RuntimeError(f"the channel delivered {got} of {n} events")
    return {"rank_us_per_event": round(rank_s / n * 1e6, 2), "agent_us_per_event": round(agent_cpu / n * 1e6, 2)}


def bench_model(name: str, data_dir: str, tmp: str, steps: int) -> dict[str, Any]:
    import numpy as np
    from mindspore import nn
    from mindspore.train import Callback, Model

    from trainer.callbacks import StepMonitor
    from trainer.config import from_dict
    from trainer.data import create_dataset
    from trainer.distributed import RankInfo
    from trainer.resnet import build_resnet

    arch, width, stem, size, batch, default_steps = MODELS[name]
    steps = steps or default_steps
    cfg = from_dict({"data_dir": data_dir, "arch": arch, "width": width, "stem": stem, "image_size": size,
                     "batch_size": batch, "epochs": 1, "log_every_steps": 10})
    net = build_resnet(arch, num_classes=10, width=width, stem=stem)
    model = Model(net, loss_fn=nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                  optimizer=nn.Momentum(net.trainable_params(), learning_rate=0.001, momentum=0.9))
    lr = np.full(10 ** 6, 0.001, np.float32)
    sink = io.StringIO()  # both cases print the same plain lines; keep them off the terminal
    monitors = {
        "off": StepMonitor(cfg, RankInfo(), 10 ** 6, lr, None, 0, stream=sink),
        "on": StepMonitor(cfg, RankInfo(), 10 ** 6, lr, os.path.join(tmp, name, "tb"), 0, stream=sink),
    }

    class Alternate(Callback):
        """Step i runs monitor ``on`` when i is odd, ``off`` when even, then stamps the step's end."""

        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_train_step_begin(self, run_context):
            for m in monitors.values():
                m.on_train_step_begin(run_context)

        def on_train_step_end(self, run_context):
            monitors["on" if len(self.times) % 2 else "off"].on_train_step_end(run_context)
            self.times.append(time.perf_counter())

    def run(n: int) -> dict[str, list[float]]:
        alt = Alternate()
        dataset = create_dataset(data_dir, training=True, image_size=size, batch_size=batch).take(n + 1)
        model.train(1, dataset, callbacks=[alt], dataset_sink_mode=False)
        out: dict[str, list[float]] = {"off": [], "on": []}
        for i in range(1, len(alt.times)):  # gap i = step i's compute and data + its monitor's work
            out["on" if i % 2 else "off"].append(alt.times[i] - alt.times[i - 1])
        return out

    run(2)  # compile
    gaps = run(steps)
    for m in monitors.values():
        m.close()
    stats = {case: {"mean_step_ms": round(1000 * statistics.fmean(g), 2),
                    "median_step_ms": round(1000 * statistics.median(g), 2), "steps": len(g)}
             for case, g in gaps.items()}
    off, on = statistics.fmean(gaps["off"]), statistics.fmean(gaps["on"])
    direct_us = _direct_cost_us(tmp)
    channel = _channel_cost_us()
    median_off_us = statistics.median(gaps["off"]) * 1e6
    return {"model": f"{arch} width {width} {stem} stem, {size}x{size}, batch {batch}", **stats,
            "steps_per_s_off": round(1 / off, 3), "steps_per_s_on": round(1 / on, 3),
            "overhead_pct": round(100 * (on - off) / off, 2),
            "direct_us_per_step": round(direct_us, 1),
            "direct_pct": round(100 * direct_us / 1e6 / statistics.median(gaps["off"]), 3),
            "channel": {**channel, "rank_pct": round(100 * channel["rank_us_per_event"] / median_off_us, 4),
                        "agent_pct": round(100 * channel["agent_us_per_event"] / median_off_us, 4)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("small", "resnet50", "both"), default="small")
    parser.add_argument("--steps", type=int, default=0, help="timed steps, half of them with TensorBoard "
                                                             "(default: per model)")
    args = parser.parse_args()

    from trainer.cpu import configure_cpu_backend

    configure_cpu_backend()
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms

    from trainer.standin import make_digits_standin

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(1)
    out: dict[str, Any] = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = make_digits_standin(os.path.join(tmp, "data")).dir
        for name in (("small", "resnet50") if args.model == "both" else (args.model,)):
            out["results"].append(bench_model(name, data_dir, tmp, args.steps))
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
