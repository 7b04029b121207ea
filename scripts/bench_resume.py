#!/usr/bin/env python3
"""Benchmark checkpointing and recovery: the training stall per checkpoint, load time, and the time
from a rank's death to training resumed; prints one JSON document.

Hardware this was written and first run on: 2 vCPUs, 24 GiB, no GPU/NPU; mindspore 2.10.0 CPU,
Python 3.11. Every figure is wall-clock time on 2 shared cores: the JSON records the load average
before and after so that a noisy run can be recognised.

What is measured:
- ``save`` (in this process, GRAPH_MODE), for ResNet-50 (ImageNet stem, 10 classes) at 32x32 batch 32
  and for the small demo config (cluster_configs/local_cpu.yaml: ResNet-18, CIFAR stem, width 16,
  32x32, batch 32): a TrainOneStepCell with Momentum, as the trainer saves it (weights, BatchNorm
  statistics, moments, learning-rate array, global step), written by trainer.checkpoint's
  CheckpointWriter (temporary file, fsync, SHA-256, rename, sidecar, prune), in both modes:
    ``sync``   the step waits for the whole write;
    ``async``  the step waits for a copy of the parameters (trainer.train._snapshot); a thread
               writes. ``slowdown_ms`` is the extra time the next steps took while that thread
               competed for the CPU; ``effective_stall_ms`` = stall + slowdown.
  ``share_of_epoch_pct`` = stall / one CIFAR-10 epoch (50,000 images at this batch size, one
  process, the measured median step time): the cost of one checkpoint per epoch (target <= 1%).
  ``load``: verify (size + SHA-256 against the sidecar) and load into the cell (load_checkpoint +
  load_param_into_net), as a resume does.
- ``recovery``: a real 2-rank ``mscluster launch`` of the small config with ``restarts: 1``; rank 1
  kills itself with SIGKILL after a step of attempt 0 (``debug_fail_signal``). Times are taken at
  the arrival of the launcher's output lines: ``death`` = rank 1's last step line (it dies right
  after printing it); then the restart notice (every rank stopped), the ``resumed from`` line
  (processes started, cluster formed, checkpoint verified and loaded) and the first step line of
  the new attempt (its first step, including graph compilation). ``death_to_first_step_s`` is the
  figure users feel.

- ``snapshots``: ResNet-18 w16 and ResNet-50 (32x32, batch 16 per rank, 2 ranks on this host):
  rank 1 SIGKILLed after step 50 with no disk checkpoint since the start, once with
  ``snapshot_every_steps: auto`` and once without snapshots. Per run: the interval auto picked and
  the stall it measured (rank 0's ``snapshots:`` lines), where the state came from and its step, the
  steps lost (result.json), the seconds from the death to the first resumed step and to step 50
  reached again.

Usage: .venv/bin/python scripts/bench_resume.py [--quick] [--only save,recovery,snapshots] [--rounds N]
The default run takes about 3 minutes here; --quick (small config only, shorter launch) about 1.5.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

SECTIONS = ("save", "recovery", "snapshots")
CIFAR_TRAIN_IMAGES = 50_000
SHARE_TARGET_PCT = 1.0
NETS = {
    "resnet50_32px_b32": {"arch": "resnet50", "stem": "imagenet", "width": 64, "image_size": 32, "batch": 32},
    "small_resnet18_w16_32px_b32": {"arch": "resnet18", "stem": "cifar", "width": 16, "image_size": 32, "batch": 32},
}
SMALL_TRAIN = {"data_dir": None, "arch": "resnet18", "stem": "cifar", "width": 16, "image_size": 32,
               "batch_size": 32, "epochs": 1, "steps_per_epoch": 12, "save_every_steps": 2, "lr": 0.05,
               "lr_schedule": "cosine", "momentum": 0.9, "weight_decay": 5e-4, "log_every_steps": 1,
               "eval_every_epochs": 0, "tensorboard": False}


# -- save / load stall (in process) ----------------------------------------------------------------

def _train_cell(spec: dict[str, Any]):
    import numpy as np
    import mindspore as ms
    from mindspore import nn

    from trainer.resnet import build_resnet
    from trainer.schedule import lr_per_step

    ms.set_seed(1)
    net = build_resnet(spec["arch"], num_classes=10, width=spec["width"], stem=spec["stem"])
    lr = ms.Tensor(lr_per_step("cosine", 0.01, 10_000, 1_000))
    opt = nn.Momentum(net.trainable_params(), learning_rate=lr, momentum=0.9, weight_decay=1e-4)
    cell = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")),
                               opt)
    cell.set_train()
    rng = np.random.default_rng(0)
    size, batch = spec["image_size"], spec["batch"]
    x = ms.Tensor(rng.standard_normal((batch, 3, size, size), dtype=np.float32))
    y = ms.Tensor(rng.integers(0, 10, batch).astype(np.int32))

    def step() -> float:
        t0 = time.perf_counter()
        cell(x, y).asnumpy()  # read the loss back, as the trainer's monitor does
        return time.perf_counter() - t0

    return cell, step


def _fields(global_step: int) -> dict[str, Any]:
    return dict(epoch=0, step_in_epoch=global_step, global_step=global_step, dataset_seed=1,
                fingerprint={"bench": True}, config={})


def bench_save(spec: dict[str, Any], directory: str, rounds: int, block_steps: int, timed_steps: int) -> dict[str, Any]:
    import mindspore as ms

    from trainer import checkpoint as ckpt
    from trainer.train import _snapshot

    cell, step = _train_cell(spec)
    t0 = time.perf_counter()
    step()
    first_step_s = time.perf_counter() - t0
    for _ in range(2):
        step()
    base = statistics.median(step() for _ in range(timed_steps))
    epoch_steps = CIFAR_TRAIN_IMAGES // spec["batch"]
    epoch_s = base * epoch_steps
    out: dict[str, Any] = {**spec, "median_step_s": round(base, 4), "first_step_s": round(first_step_s, 2),
                           "epoch_steps": epoch_steps, "epoch_s": round(epoch_s, 1), "block_steps": block_steps}
    writers = {mode: ckpt.CheckpointWriter(os.path.join(directory, mode), keep_max=2, background=(mode == "async"))
               for mode in ("sync", "async")}
    stalls: dict[str, list[float]] = {"sync": [], "async": []}
    costs: dict[str, list[float]] = {"sync": [], "async": []}
    writes: dict[str, list[float]] = {"sync": [], "async": []}
    for mode, writer in writers.items():
        writer.on_saved = lambda path, meta, s, mode=mode: writes[mode].append(s)
    gs = 0

    def block(mode: str) -> float:
        """``block_steps`` steps with one checkpoint started before them (none for "none")."""
        nonlocal gs
        t0 = time.perf_counter()
        if mode != "none":
            gs += 1
            if mode == "async":
                snap = _snapshot(cell)
                writers[mode].submit(lambda p: ms.save_checkpoint(snap, p), _fields(gs))
            else:
                writers[mode].submit(lambda p: ms.save_checkpoint(cell, p), _fields(gs))
            stalls[mode].append(time.perf_counter() - t0)
        for _ in range(block_steps):
            step()
        if mode != "none":
            writers[mode].wait()  # a write still running after the block counts against it
        return time.perf_counter() - t0

    # blocks alternate so that the load of other processes hits every mode alike
    for _ in range(rounds):
        plain = block("none")
        for mode in ("sync", "async"):
            costs[mode].append(max(block(mode) - plain, 0.0))
    for mode in ("sync", "async"):
        stall_ms = statistics.median(stalls[mode]) * 1000.0
        cost_ms = statistics.median(costs[mode]) * 1000.0
        out[mode] = {"stall_ms": round(stall_ms, 1), "stall_ms_each": [round(v * 1000.0, 1) for v in stalls[mode]],
                     "write_s": round(statistics.median(writes[mode]), 3),
                     "cost_ms": round(cost_ms, 1), "cost_ms_each": [round(v * 1000.0, 1) for v in costs[mode]],
                     "stall_share_of_epoch_pct": round(100.0 * stall_ms / 1000.0 / epoch_s, 4),
                     "cost_share_of_epoch_pct": round(100.0 * cost_ms / 1000.0 / epoch_s, 4)}
    path = writers["sync"].last[0]
    out["checkpoint_mb"] = round(os.path.getsize(path) / 1e6, 1)
    verify, load = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        ckpt.verify(path)
        t1 = time.perf_counter()
        params = ms.load_checkpoint(path)
        ms.load_param_into_net(cell, params)
        t2 = time.perf_counter()
        verify.append(t1 - t0)
        load.append(t2 - t1)
    out["load"] = {"verify_ms": round(statistics.median(verify) * 1000.0, 1),
                   "load_ms": round(statistics.median(load) * 1000.0, 1)}
    return out


# -- recovery after a rank's death (a real launch) -----------------------------------------------

def bench_recovery(work: str, data_dir: str, fail_step: int, steps: int) -> dict[str, Any]:
    import yaml

    cluster = {"name": "bench-resume", "backend": "cpu", "workdir": os.path.join(work, "runs"),
               "hosts": [{"address": "localhost", "devices": 2}], "restarts": 1,
               "env": {"MS_TOPO_TIMEOUT": "60", "GLOG_v": "3"},
               "train": {**SMALL_TRAIN, "data_dir": data_dir, "steps_per_epoch": steps, "debug_fail_rank": 1,
                         "debug_fail_step": fail_step, "debug_fail_signal": 9, "debug_fail_attempt": 0}}
    path = os.path.join(work, "cluster.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(cluster, handle)
    job = os.path.join(work, "job")
    argv = [sys.executable, "-m", "mscluster_cli", "launch", path, "--job-dir", job]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1",
                                 "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    marks: dict[str, float] = {}
    resumed_step: Optional[int] = None
    tail: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        now = time.monotonic() - started
        tail = (tail + [line.rstrip()])[-40:]
        if "restart" not in marks and re.match(rf"^\[localhost:1\] .*global_step={fail_step} ", line):
            marks["death"] = now
        elif line.startswith("mscluster: restart 1 of 1"):
            marks["restart"] = now
        elif "restart" in marks:
            match = re.match(r"^\[localhost:0\] resumed from \S+ epoch=\d+ step=\d+", line)
            if match and "resumed" not in marks:
                marks["resumed"] = now
            step = re.match(r"^\[localhost:0\] .*global_step=(\d+) ", line)
            if step and "resumed" in marks and "first_step" not in marks:
                marks["first_step"] = now
                resumed_step = int(step.group(1))
    code = proc.wait()
    if code != 0 or not {"death", "restart", "resumed", "first_step"} <= set(marks):
        return {"error": f"launch exited {code}; marks {marks}", "output_tail": tail}
    result = json.load(open(os.path.join(job, "result.json"), encoding="utf-8"))
    return {
        "config": {k: v for k, v in SMALL_TRAIN.items() if k != "data_dir"} | {"steps_per_epoch": steps},
        "killed": f"rank 1, SIGKILL after global step {fail_step}",
        "first_step_after_resume": resumed_step,
        "death_to_all_stopped_s": round(marks["restart"] - marks["death"], 2),
        "backoff_s": 2.0,
        "restart_notice_to_resumed_line_s": round(marks["resumed"] - marks["restart"], 2),  # includes the back-off
        "resumed_line_to_first_step_s": round(marks["first_step"] - marks["resumed"], 2),
        "death_to_first_step_s": round(marks["first_step"] - marks["death"], 2),
        "launch_total_s": round(time.monotonic() - started, 1),
        "result_status": result["status"],
    }


# -- in-memory snapshots vs the disk checkpoint (train: snapshot_every_steps) ---------------------

SNAP_NETS = {
    "resnet18_w16_32px": {"arch": "resnet18", "stem": "cifar", "width": 16},
    "resnet50_32px": {"arch": "resnet50", "stem": "imagenet", "width": 64},
}


def _launch_marks(work: str, train: dict[str, Any], fail_step: int) -> dict[str, Any]:
    """One 2-rank launch whose rank 1 dies by SIGKILL after ``fail_step``; marks from the output lines."""
    import yaml

    cluster = {"name": "bench-snap", "backend": "cpu", "workdir": os.path.join(work, "runs"),
               "hosts": [{"address": "localhost", "devices": 2}], "restarts": 1,
               "env": {"MS_TOPO_TIMEOUT": "60", "GLOG_v": "3"},
               "train": {**train, "debug_fail_rank": 1, "debug_fail_step": fail_step, "debug_fail_signal": 9,
                         "debug_fail_attempt": 0}}
    path = os.path.join(work, "cluster.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(cluster, handle)
    job = os.path.join(work, "job")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mscluster_cli", "launch", path, "--job-dir", job], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1",
                                 "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    marks: dict[str, float] = {}
    lines: dict[str, str] = {}
    tail: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        now = time.monotonic() - started
        tail = (tail + [line.rstrip()])[-40:]
        if "[localhost:0] snapshots: every" in line and "restart" not in marks:
            lines["auto"] = line.split("] ", 1)[1].strip()
        if "[localhost:0] snapshots:" in line and " taken," in line:
            lines["summary"] = line.split("] ", 1)[1].strip()
        if line.startswith("mscluster: restart 1 of 1"):
            marks["restart"] = now
        elif "restart" in marks:
            if "first_step" not in marks and re.match(r"^\[localhost:0\] .*global_step=(\d+) ", line):
                marks["first_step"] = now
            if re.match(rf"^\[localhost:0\] .*global_step={fail_step} ", line):
                marks["regained"] = now
    code = proc.wait()
    if code != 0 or not {"restart", "first_step", "regained"} <= set(marks):
        return {"error": f"launch exited {code}; marks {marks}", "output_tail": tail}
    result = json.load(open(os.path.join(job, "result.json"), encoding="utf-8"))
    first, second = result["attempts"][:2]
    return {"state_from": second.get("state_from"), "resumed_step": second.get("resumed_step"),
            "steps_lost": first.get("steps_lost"),
            # the launcher's own figure: the root cause's time to the next attempt's first step
            "death_to_first_resumed_step_s": first.get("recover_s"),
            "death_to_killed_step_again_s": round(first["recover_s"] + marks["regained"] - marks["first_step"], 2)
            if first.get("recover_s") is not None else None,
            "restart_notice_to_first_resumed_step_s": round(marks["first_step"] - marks["restart"], 2),
            "auto": lines.get("auto"), "stall_summary": lines.get("summary"),
            "launch_total_s": round(time.monotonic() - started, 1)}


def bench_snapshots(work: str, data_dir: str, fail_step: int, nets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per net: rank 1 SIGKILLed ``fail_step`` steps after the last disk checkpoint (the start: none is
    written before), once with ``snapshot_every_steps: auto``, once without snapshots."""
    out: dict[str, Any] = {}
    for name, spec in nets.items():
        train = {"data_dir": data_dir, **spec, "image_size": 32, "batch_size": 16, "epochs": 1,
                 "steps_per_epoch": fail_step + 4, "save_every_steps": 0, "save_every_epochs": 1, "lr": 0.01,
                 "momentum": 0.9, "log_every_steps": 1, "eval_every_epochs": 0, "tensorboard": False}
        row: dict[str, Any] = {}
        for mode, every in (("memory", "auto"), ("disk", 0)):
            folder = os.path.join(work, f"{name}-{mode}")
            os.makedirs(folder)
            row[mode] = _launch_marks(folder, {**train, "snapshot_every_steps": every}, fail_step)
        out[name] = row
    return out


# -- main ------------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small config only and a shorter launch")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated out of {','.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=3, help="checkpoints per mode and model (default 3)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    from trainer.cpu import configure_cpu_backend

    configure_cpu_backend()  # before MindSpore loads, as the trainer does (oneDNN AVX2 cap)
    t_start = time.perf_counter()
    report: dict[str, Any] = {"bench": "resume", "quick": args.quick,
                              "host": {"cpus": os.cpu_count(), "machine": platform.machine(),
                                       "python": platform.python_version()},
                              "loadavg_start": [round(v, 2) for v in os.getloadavg()],
                              "share_target_pct": SHARE_TARGET_PCT}
    with tempfile.TemporaryDirectory(prefix="bench_resume_") as tmp:
        if "save" in only:
            import mindspore as ms

            ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
            report["mindspore"] = ms.__version__
            nets = {k: v for k, v in NETS.items() if not args.quick or k.startswith("small")}
            report["save"] = {}
            for name, spec in nets.items():
                big = spec["arch"] == "resnet50"
                report["save"][name] = bench_save(spec, os.path.join(tmp, name), args.rounds,
                                                  block_steps=4 if big else 8, timed_steps=6 if big else 20)
        if "recovery" in only:
            from trainer.standin import make_digits_standin

            data = make_digits_standin(os.path.join(tmp, "data")).dir
            work = os.path.join(tmp, "recovery")
            os.makedirs(work)
            report["recovery"] = bench_recovery(work, data, fail_step=5 if args.quick else 7,
                                                steps=8 if args.quick else 12)
        if "snapshots" in only:
            from trainer.standin import make_digits_standin

            data = make_digits_standin(os.path.join(tmp, "data-snap")).dir
            work = os.path.join(tmp, "snapshots")
            os.makedirs(work)
            nets = {k: v for k, v in SNAP_NETS.items() if not args.quick or k.startswith("resnet18")}
            report["snapshots"] = bench_snapshots(work, data, fail_step=50, nets=nets)
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["bench_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
