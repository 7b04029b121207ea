#!/usr/bin/env python3
"""Data-parallel throughput of mscluster against PyTorch DDP, side by side on this machine; one JSON document.

For ResNet-50 (ImageNet stem, 10 classes) at each ``--sizes`` (default 32 and 224), global batch B
(``--batch32``/``--batch224``, default 32 and 16), job img/s of:

    1proc           ``mscluster train``, one process, batch B
    2ranks          ``mscluster launch``, 2 local ranks of B/2 (the default exchange: shared memory)
    2ranks_collective  the same with grad_exchange collective (the dynamic cluster's AllReduce)
    2ranks_k4       2 ranks of B/2 with grad_accumulation 4 (one exchange per 4 micro-batches)
    2ranks_fp16     2 ranks of B/2, the collective with grad_allreduce_dtype float16
    2ranks_buckets  2 ranks of B/2, the collective with grad_buckets 8 (8 flat buffers, not one per parameter)
    torch_1proc     scripts/torch_ddp_peer.py, one process, batch B (2 threads)
    torch_ddp2      the same under ``torchrun --nproc-per-node 2`` (gloo), B/2 per rank, 1 thread each

and each one's ratio to its framework's 1-process figure. mscluster's img/s is the median over the
timed steps of what rank 0's StepMonitor prints (images of every rank per wall time between step
ends, data loading included: the CIFAR-format stand-in through trainer.data); the first
``--warmup`` steps (graph compilation) are left out. torch's is its peer's timed loop on one fixed
batch per rank. Compare ratios, not absolute figures: the frameworks' kernels differ (NOTES.md).

``--accuracy`` also trains the digits stand-in on 2 ranks with the float32 and the float16 exchange
(tests/test_learning.py's settings) and reports both top-1.

The torch peer needs its own venv: ``--torch-python`` (default .venv-torch/bin/python; made with
``python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0`` if missing and
``--make-torch-venv``). The machine must be otherwise idle; the JSON records the load average.

Usage: .venv/bin/python scripts/bench_dp.py [--sizes 32,224] [--cases 1proc,2ranks,...] [--accuracy]
       [--quick]   (a width-8 ResNet-18 at 32x32, a few steps: checks that it runs)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
from bench_train import base_env, make_standin  # noqa: E402  (the same environment and CIFAR-format stand-in)
from benchlib import cpu_model  # noqa: E402

PEER = os.path.join(REPO_ROOT, "scripts", "torch_ddp_peer.py")
MSCLUSTER_CASES = {  # name -> (ranks, train settings beyond the common ones)
    "1proc": (1, {}),
    "2ranks": (2, {}),  # the default exchange: shared memory between the ranks of this host
    "2ranks_collective": (2, {"grad_exchange": "collective"}),
    "2ranks_k4": (2, {"grad_accumulation": 4}),
    "2ranks_fp16": (2, {"grad_exchange": "collective", "grad_allreduce_dtype": "float16"}),
    "2ranks_buckets": (2, {"grad_exchange": "collective", "grad_buckets": 8}),
}
TORCH_CASES = ("torch_1proc", "torch_ddp2")
IMG_S = re.compile(r"global_step=(\d+) .*img/s=([\d.]+)")
TIMEOUT_S = 1800


def _log(msg: str) -> None:
    print(f"[bench_dp {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median_img_s(text: str, warmup: int) -> Optional[float]:
    """The median job img/s of rank 0's progress lines after ``warmup`` steps."""
    values = [float(v) for step, v in IMG_S.findall(text) if int(step) > warmup]
    return round(statistics.median(values), 2) if values else None


def _env() -> dict[str, str]:
    """bench_train's environment for a MindSpore process (this repo first on the path), unbuffered."""
    return {**base_env(os.environ.get("ONEDNN_MAX_CPU_ISA")), "PYTHONUNBUFFERED": "1"}


def train_settings(args: argparse.Namespace, size: int, batch: int, steps: int, data: str, extra: dict) -> dict:
    arch = {"arch": "resnet18", "width": 8, "stem": "cifar"} if args.quick else \
        {"arch": "resnet50", "width": 64, "stem": "imagenet"}
    return {**arch, "image_size": size, "batch_size": batch, "epochs": 1, "steps_per_epoch": steps, "lr": 0.01,
            "momentum": 0.9, "weight_decay": 1e-4, "log_every_steps": 1, "eval_every_epochs": 0,
            "tensorboard": False, "data_dir": data, **extra}


def run_mscluster(case: str, args: argparse.Namespace, size: int, batch: int, data: str, tmp: str) -> dict[str, Any]:
    ranks, extra = MSCLUSTER_CASES[case]
    k = int(extra.get("grad_accumulation", 1))
    warmup = args.warmup
    steps = warmup + max(args.steps // k if size >= 128 else args.steps, 2)
    work = tempfile.mkdtemp(prefix=f"{case}-{size}-", dir=tmp)
    train = train_settings(args, size, batch // ranks, steps, data, extra)
    t0 = time.perf_counter()
    if ranks == 1:
        pairs = [f"{key}={value}" for key, value in train.items()] + [f"output_dir={work}/out"]
        argv = [sys.executable, "-m", "mscluster_cli", "train", "--set", *pairs]
    else:
        cluster = os.path.join(work, "c.yaml")
        with open(cluster, "w", encoding="utf-8") as handle:
            yaml.safe_dump({"name": "dp", "backend": "cpu", "workdir": os.path.join(work, "runs"),
                            "hosts": [{"address": "localhost", "devices": ranks}], "watchdog": False,
                            "env": {"MS_TOPO_TIMEOUT": "120"}, "console": [0], "train": train}, handle)
        argv = [sys.executable, "-m", "mscluster_cli", "launch", cluster]
    proc = subprocess.run(argv, cwd=work, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "output_tail": (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()}
    lines = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("[") or ln.startswith("[localhost:0]"))
    return {"img_per_s": median_img_s(lines, warmup), "ranks": ranks, "batch_per_rank": batch // ranks,
            "grad_accumulation": k, "timed_steps": steps - warmup, "wall_s": wall, **{k2: v for k2, v in extra.items()
                                                                                     if k2 != "grad_accumulation"}}


def run_torch(case: str, args: argparse.Namespace, size: int, batch: int) -> dict[str, Any]:
    python = args.torch_python
    if not os.path.exists(python):
        return {"error": f"{python} not found: make it with --make-torch-venv"}
    arch = ["--arch", "resnet18", "--width", "8"] if args.quick else ["--arch", "resnet50", "--width", "64"]
    steps = max(args.steps if size < 128 else args.steps // 2, 2)
    common = [*arch, "--size", str(size), "--warmup", str(args.warmup), "--steps", str(steps)]
    if case == "torch_1proc":
        argv = [python, PEER, *common, "--batch", str(batch)]
    else:
        torchrun = os.path.join(os.path.dirname(python), "torchrun")
        argv = [torchrun, "--standalone", "--nproc-per-node", "2", PEER, *common, "--batch", str(batch // 2)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    for attempt in range(2):  # torchrun's standalone rendezvous failed once here (SIGABRT in gloo): one retry
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            return {**json.loads(lines[-1]), **({"retried": True} if attempt else {})}
    return {"error": f"exit {proc.returncode}", "output_tail": proc.stderr[-1500:]}


def accuracy(args: argparse.Namespace, data: str, tmp: str) -> dict[str, Any]:
    """top-1 on the digits stand-in after tests/test_learning.py's 150 steps, 2 ranks of 16, float32 vs float16."""
    out = {}
    for dtype in ("float32", "float16"):
        work = tempfile.mkdtemp(prefix=f"acc-{dtype}-", dir=tmp)
        train = {"arch": "resnet18", "stem": "cifar", "width": 16, "image_size": 32, "batch_size": 16, "epochs": 3,
                 "steps_per_epoch": 50, "lr": 0.05, "lr_schedule": "cosine", "warmup_epochs": 0.3,
                 "weight_decay": 0.0001, "eval_every_epochs": 3, "log_every_steps": 50, "tensorboard": False,
                 "data_dir": data, "grad_allreduce_dtype": dtype}
        cluster = os.path.join(work, "c.yaml")
        with open(cluster, "w", encoding="utf-8") as handle:
            yaml.safe_dump({"name": "acc", "backend": "cpu", "workdir": os.path.join(work, "runs"),
                            "hosts": [{"address": "localhost", "devices": 2}], "env": {"MS_TOPO_TIMEOUT": "120"},
                            "train": train}, handle)
        proc = subprocess.run([sys.executable, "-m", "mscluster_cli", "launch", cluster, "--job-dir",
                               os.path.join(work, "job")], cwd=work, env=_env(), capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        try:
            with open(os.path.join(work, "job", "result.json"), encoding="utf-8") as handle:
                out[dtype] = json.load(handle)["eval"].get("top1")
        except (OSError, ValueError, KeyError):
            out[dtype] = {"error": f"exit {proc.returncode}", "output_tail": proc.stderr[-1000:]}
    return out


def make_torch_venv(python: str) -> None:
    venv = os.path.dirname(os.path.dirname(python))
    _log(f"making {venv} with torch==2.13.0")
    subprocess.run(["python3", "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "torch==2.13.0", "numpy"], check=True)


def ratios(results: dict[str, Any]) -> dict[str, Optional[float]]:
    def img(name: str) -> Optional[float]:
        value = results.get(name, {})
        return value.get("img_per_s") if isinstance(value, dict) else None

    out: dict[str, Optional[float]] = {}
    base = img("1proc")
    for name in MSCLUSTER_CASES:
        if name != "1proc" and base and img(name):
            out[name] = round(img(name) / base, 3)
    if img("torch_1proc") and img("torch_ddp2"):
        out["torch_ddp2"] = round(img("torch_ddp2") / img("torch_1proc"), 3)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="32,224")
    p.add_argument("--cases", default=",".join([*MSCLUSTER_CASES, *TORCH_CASES]))
    p.add_argument("--batch32", type=int, default=32)
    p.add_argument("--batch224", type=int, default=16)
    p.add_argument("--steps", type=int, default=12, help="timed steps at 32x32 (half at 224, /k with accumulation)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--accuracy", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--torch-python", default=os.path.join(REPO_ROOT, ".venv-torch", "bin", "python"))
    p.add_argument("--make-torch-venv", action="store_true")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in MSCLUSTER_CASES and c not in TORCH_CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}")
    if args.make_torch_venv and not os.path.exists(args.torch_python):
        make_torch_venv(args.torch_python)
    report: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": os.getloadavg()[0],
                              "arch": "resnet18 width 8 (quick)" if args.quick else "resnet50", "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench_dp-") as tmp:
        data = make_standin(tmp)
        for size in (int(s) for s in args.sizes.split(",") if s):
            batch = args.batch32 if size < 128 else args.batch224
            results: dict[str, Any] = {"global_batch": batch}
            for case in cases:
                _log(f"{size}x{size} {case}")
                results[case] = run_torch(case, args, size, batch) if case in TORCH_CASES else \
                    run_mscluster(case, args, size, batch, data, tmp)
                _log(f"  {results[case].get('img_per_s', results[case].get('error'))}")
            results["ratio_to_1proc"] = ratios(results)
            report["sizes"][str(size)] = results
        if args.accuracy:
            _log("accuracy: float32 vs float16 exchange on the digits stand-in")
            report["accuracy_top1"] = accuracy(args, data, tmp)
    report["load_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
