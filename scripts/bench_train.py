#!/usr/bin/env python3
"""Benchmark the trainer's step: ``Model.train`` against a bare ``TrainOneStepCell`` loop, the
data pipeline, the oneDNN ISA setting, and (optionally) PyTorch; prints one JSON document.

Hardware this was written and first run on: 2 vCPUs (AMD EPYC, AVX-512 incl. VNNI/BF16, no AMX),
24 GiB, no GPU/NPU; mindspore 2.10.0 CPU, Python 3.11. The machine must be otherwise idle: every
figure is wall-clock time on 2 cores, and another busy process halves it. The JSON records the
load average before and after so a noisy run can be recognised.

What is measured (GRAPH_MODE unless --mode pynative):
- ``train``: img/s and median step time of ResNet-50 (ImageNet stem, 10 classes) at 32x32 batch 32
  and 224x224 batch 16, for
    ``bare``          TrainOneStepCell(WithLossCell(net, loss), Momentum) on one fixed batch;
    ``model``         the trainer's path: mindspore.train.Model(net, loss, Momentum, metrics).train
                      with dataset_sink_mode=False over a dataset yielding that same fixed batch;
    ``model_cifar``   the same Model fed by trainer.data.create_dataset over a CIFAR-format stand-in;
    ``model_monitor`` ``model`` plus the trainer's StepMonitor callback (log line, TensorBoard).
  Loss and optimizer are trainer/train.py's: SoftmaxCrossEntropyWithLogits(sparse, mean),
  Momentum(lr 0.01, momentum 0.9) with weight decay 1e-4 on conv/dense weights (the torch peer's
  protocol; the trainer's ``_decayed_params``). Every step reads the loss back (``asnumpy``), as the
  trainer's StepMonitor does. Warm-up steps (graph compilation) are excluded; the timed steps of
  the cases are run in alternating blocks so drift hits all alike; a step's time is the gap
  between consecutive step ends (so it includes the data fetch). ``ratio`` = model / bare img/s
  (target >= 0.97).
- ``isa``: the bare loop at 32x32 under several ``ONEDNN_MAX_CPU_ISA`` values, each in its own
  process (oneDNN reads the variable once, at load). ``trainer`` = what trainer/cpu.py does.
- ``data``: trainer.data.create_dataset (train transforms) at 32 and 224, 1 and 2 workers, img/s.
- ``torch``: ../shared/bench/torch_peer.py run by --torch-python, same sizes, side by side.

Usage: .venv/bin/python scripts/bench_train.py [--quick] [--only train32,train224,isa,data,torch]
       [--steps N] [--torch-python /tmp/torchvenv/bin/python]
The default run takes about 6 minutes here. --quick (a tiny ResNet-18, ~1 minute) checks it works.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PEER = os.path.join(os.path.dirname(REPO_ROOT), "shared", "bench", "torch_peer.py")
ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
SECTIONS = ("train32", "train224", "isa", "data", "torch")
RATIO_TARGET = 0.97
WORKER_TIMEOUT_S = 900


# -- measurement helpers (run inside a worker process) ---------------------------------------------

def _summary(durations: list[float], batch: int, first_step_s: Optional[float]) -> dict[str, Any]:
    total = sum(durations)
    return {"img_per_s": round(batch * len(durations) / total, 2) if total > 0 else None,
            "median_step_s": round(statistics.median(durations), 4),
            "min_step_s": round(min(durations), 4), "max_step_s": round(max(durations), 4),
            "steps": len(durations),
            "first_step_s": None if first_step_s is None else round(first_step_s, 2)}


class _BareCase:
    """A bare TrainOneStepCell loop on one fixed batch."""

    def __init__(self, build, x, y):
        from mindspore import nn

        net, loss_fn, opt = build()
        self.step = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn), opt)
        self.step.set_train()
        self.x, self.y = x, y

    def run(self, steps: int, max_seconds: float = float("inf")) -> list[float]:
        """Return the duration of each of ``steps`` steps (fewer, but >= 2, past ``max_seconds``)."""
        out, t0 = [], time.perf_counter()
        last = t0
        for i in range(steps):
            self.step(self.x, self.y).asnumpy()
            now = time.perf_counter()
            out.append(now - last)
            last = now
            if i >= 1 and now - t0 > max_seconds:
                break
        return out


class _ModelCase:
    """mindspore.train.Model.train (dataset_sink_mode=False), the trainer's path."""

    def __init__(self, build, make_dataset, batch: int, monitor_dir: Optional[str] = None):
        from mindspore.train import Callback, Model
        from mindspore.train.metrics import Accuracy, Loss

        net, loss_fn, opt = build()
        self.model = Model(net, loss_fn=loss_fn, optimizer=opt, metrics={"top1": Accuracy(), "loss": Loss()},
                           amp_level="O0")
        self.make_dataset = make_dataset
        self.callbacks: list = []
        if monitor_dir is not None:
            import numpy as np

            from trainer.callbacks import StepMonitor
            from trainer.config import TrainConfig
            from trainer.distributed import RankInfo

            cfg = TrainConfig(batch_size=batch)  # the trainer's defaults: a line every 10 steps, TensorBoard on
            self.monitor = StepMonitor(cfg, RankInfo(), 10 ** 6, np.full(1, 0.01, np.float32), monitor_dir, 0)
            self.callbacks.append(self.monitor)

        class Ends(Callback):
            def __init__(self):
                super().__init__()
                self.times: list[float] = []

            def on_train_step_end(self, run_context):
                run_context.original_args().net_outputs.asnumpy()  # wait for the step, as the monitor does
                self.times.append(time.perf_counter())

        self.ends = Ends()

    def run(self, steps: int) -> list[float]:
        """Run ``steps + 1`` steps in one ``Model.train`` call; return the ``steps`` gaps between ends."""
        self.ends.times = []
        self.model.train(1, self.make_dataset(steps + 1), callbacks=self.callbacks + [self.ends],
                         dataset_sink_mode=False)
        t = self.ends.times
        return [b - a for a, b in zip(t, t[1:])]


def _fixed_batch_dataset(x, y, steps: int):
    """A dataset yielding the same (image, label) batch ``steps`` times, already batched."""
    import mindspore.dataset as ds

    def gen():
        for _ in range(steps):
            yield x, y

    return ds.GeneratorDataset(gen, column_names=["image", "label"], shuffle=False,
                               python_multiprocessing=False)


def _worker_train(spec: dict[str, Any]) -> dict[str, Any]:
    """One size: build every case, warm each up, then alternate timed blocks."""
    import numpy as np
    import mindspore as ms
    from mindspore import nn

    from trainer.distributed import RankInfo, init_backend
    from trainer.resnet import build_resnet
    from trainer.train import _decayed_params

    init_backend(RankInfo(), spec["mode"] == "graph")
    size, batch = spec["size"], spec["batch"]
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y_np = rng.integers(0, 10, batch).astype(np.int32)
    x, y = ms.Tensor(x_np), ms.Tensor(y_np)
    wd = spec["weight_decay"]

    def build():
        ms.set_seed(1)  # every case starts from the same weights
        net = build_resnet(spec["arch"], num_classes=10, width=spec["width"], stem=spec["stem"])
        loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        opt = nn.Momentum(_decayed_params(net) if wd else net.trainable_params(), learning_rate=0.01,
                          momentum=0.9, weight_decay=wd)
        return net, loss_fn, opt

    def cifar_dataset(steps: int):
        from trainer.data import create_dataset

        return create_dataset(spec["data_dir"], training=True, image_size=size, batch_size=batch,
                              num_parallel_workers=1).take(steps)

    cases: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="tensorboard_", dir=spec.get("scratch"))  # the parent removes its scratch folder
    for name in spec["cases"]:
        if name == "bare":
            cases[name] = _BareCase(build, x, y)
        elif name == "model":
            cases[name] = _ModelCase(build, lambda n: _fixed_batch_dataset(x_np, y_np, n), batch)
        elif name == "model_monitor":
            cases[name] = _ModelCase(build, lambda n: _fixed_batch_dataset(x_np, y_np, n), batch, tmp)
        elif name == "model_cifar":
            cases[name] = _ModelCase(build, cifar_dataset, batch)
        else:
            raise ValueError(f"unknown case {name}")

    first: dict[str, float] = {}
    for name, case in cases.items():  # warm-up: compilation and the first steps, untimed
        t0 = time.perf_counter()
        if name == "bare":
            case.run(spec["warmup"])
        else:  # a Model block runs one step more than asked
            case.run(max(spec["warmup"] - 1, 0))
        first[name] = time.perf_counter() - t0

    blocks = max(1, spec["blocks"])
    per_block = [spec["steps"] // blocks + (1 if i < spec["steps"] % blocks else 0) for i in range(blocks)]
    durations: dict[str, list[float]] = {name: [] for name in cases}
    for n in per_block:
        for name, case in cases.items():
            if n > 0:
                durations[name] += case.run(n)
    for case in cases.values():
        if getattr(case, "monitor", None) is not None:
            case.monitor.close()
    result = {name: _summary(durations[name], batch, first[name]) for name in cases}
    result["_isa"] = os.environ.get(ISA_VARIABLE)
    return result


def _worker_isa(spec: dict[str, Any]) -> dict[str, Any]:
    """The bare loop only, under whatever ONEDNN_MAX_CPU_ISA this process was started with."""
    import numpy as np
    import mindspore as ms
    from mindspore import nn

    from trainer.distributed import RankInfo, init_backend
    from trainer.resnet import build_resnet
    from trainer.train import _decayed_params

    init_backend(RankInfo(), spec["mode"] == "graph")
    size, batch, wd = spec["size"], spec["batch"], spec["weight_decay"]
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 10, batch).astype(np.int32))

    def build():
        ms.set_seed(1)
        net = build_resnet(spec["arch"], num_classes=10, width=spec["width"], stem=spec["stem"])
        return (net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                nn.Momentum(_decayed_params(net) if wd else net.trainable_params(), 0.01, 0.9, weight_decay=wd))

    case = _BareCase(build, x, y)
    t0 = time.perf_counter()
    case.run(spec["warmup"])
    first = time.perf_counter() - t0
    durations = case.run(spec["steps"], spec["max_seconds"])
    out = _summary(durations, batch, first)
    out["isa_env"] = os.environ.get(ISA_VARIABLE)
    return out


def _worker_data(spec: dict[str, Any]) -> dict[str, Any]:
    """Images per second out of trainer.data.create_dataset, the first batch excluded."""
    from trainer.data import create_dataset

    rows = []
    for size, batches in spec["sizes"]:
        for workers in spec["workers"]:
            dataset = create_dataset(spec["data_dir"], training=True, image_size=size, batch_size=spec["batch"],
                                     num_parallel_workers=workers)
            it = dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
            next(it)
            t0, n = time.perf_counter(), 0
            for _ in range(batches):
                images, _labels = next(it)
                n += images.shape[0]
            dt = time.perf_counter() - t0
            rows.append({"image_size": size, "batch": spec["batch"], "num_parallel_workers": workers,
                         "images": n, "img_per_s": round(n / dt, 1)})
    return {"rows": rows}


def worker_main(spec_path: str, out_path: str) -> int:
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    sys.path.insert(0, REPO_ROOT)
    if spec.get("trainer_isa"):  # do what the trainer process does before MindSpore loads
        from trainer.cpu import configure_cpu_backend

        configure_cpu_backend()
    os.environ.setdefault("GLOG_v", "3")
    kind = spec["kind"]
    result = {"train": _worker_train, "isa": _worker_isa, "data": _worker_data}[kind](spec)
    import resource

    result["_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


# -- orchestration (the parent process) --------------------------------------------------------------

def _log(msg: str) -> None:
    print(f"[bench_train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_worker(spec: dict[str, Any], env: dict[str, str], tmp: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter with exactly ``env``; return its JSON result."""
    spec_path = os.path.join(tmp, f"spec_{time.monotonic_ns()}.json")
    out_path = spec_path.replace("spec_", "out_")
    with open(spec_path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec_path, out_path],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    if proc.returncode != 0 or not os.path.exists(out_path):
        tail = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()
        return {"error": f"worker exited {proc.returncode}", "output_tail": tail}
    with open(out_path, encoding="utf-8") as handle:
        result = json.load(handle)
    result["_wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def base_env(isa: Optional[str]) -> dict[str, str]:
    """The parent's environment without ONEDNN_MAX_CPU_ISA, plus ``isa`` when given."""
    env = {k: v for k, v in os.environ.items() if k != ISA_VARIABLE}
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("GLOG_v", "3")
    if isa:
        env[ISA_VARIABLE] = isa
    return env


def make_standin(tmp: str) -> str:
    out = os.path.join(tmp, "standin")
    subprocess.run([sys.executable, "-m", "trainer.standin", out], cwd=REPO_ROOT, env=base_env(None), check=True,
                   capture_output=True, text=True, timeout=300)
    return os.path.join(out, "cifar-10-batches-bin")


def run_torch(python: str, peer: str, arch: str, width: int, size: int, batch: int, warmup: int,
              steps: int) -> dict[str, Any]:
    argv = [python, peer, "--arch", arch, "--width", str(width), "--size", str(size), "--batch", str(batch),
            "--warmup", str(warmup), "--steps", str(steps), "--threads", str(os.cpu_count() or 1)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"torch peer exited {proc.returncode}", "output_tail": proc.stderr[-2000:]}
    return json.loads(lines[-1])


_PROBE = """
import numpy as np, mindspore as ms
from mindspore import nn
ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
conv = nn.Conv2d(64, 64, 3, pad_mode="pad", padding=1, has_bias=False)
conv(ms.Tensor(np.ones((8, 64, 32, 32), np.float32))).asnumpy()
"""


def onednn_probe(isa: Optional[str]) -> dict[str, Any]:
    """What oneDNN reports under ``isa``: the ISA it uses and the kernel one 3x3 conv gets.

    Deterministic (unlike timings): ``ref:any`` is the slow reference kernel, ``gemm:jit`` the fast one.
    """
    env = base_env(isa)
    env["ONEDNN_VERBOSE"] = "1"
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    lines = proc.stdout.splitlines()
    cpu_isa = next((ln.split("isa:", 1)[1] for ln in lines if ",info,cpu,isa:" in ln), None)
    impls = sorted({ln.split(",")[6] for ln in lines if ",exec,cpu,convolution," in ln and len(ln.split(",")) > 6})
    return {"onednn_isa": cpu_isa, "conv_impl": impls}


def host_info() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        from importlib.metadata import version

        ms_version = version("mindspore")
    except Exception:  # noqa: BLE001 - only informational
        ms_version = None
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "mindspore": ms_version, "user_isa_env": os.environ.get(ISA_VARIABLE)}


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Sizes, steps and cases of this run (the default, or --quick's tiny one)."""
    if args.quick:
        net = {"arch": "resnet18", "width": 8, "stem": "imagenet"}
        sizes = {"train32": (32, 8, 2, 6, ["bare", "model", "model_cifar", "model_monitor"]),
                 "train224": (64, 4, 2, 4, ["bare", "model"])}
        isa = {"values": ["unset", "AVX2"], "size": 32, "batch": 8, "warmup": 1, "steps": 3, "max_seconds": 5}
        data = {"sizes": [[32, 5], [64, 5]], "workers": [1], "batch": 32}
        torch_runs = [(32, 8, 1, 3), (64, 4, 1, 3)]
    else:
        net = {"arch": "resnet50", "width": 64, "stem": "imagenet"}
        sizes = {"train32": (32, 32, 3, args.steps or 20, ["bare", "model", "model_cifar", "model_monitor"]),
                 "train224": (224, 16, 2, args.steps or 6, ["bare", "model"])}
        isa = {"values": ["unset", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"], "size": 32,
               "batch": 32, "warmup": 2, "steps": 8, "max_seconds": 12}
        data = {"sizes": [[32, 200], [224, 60]], "workers": [1, 2], "batch": 32}
        torch_runs = [(32, 32, 3, args.steps or 20), (224, 16, 2, args.steps or 6)]
    return {"net": net, "sizes": sizes, "isa": isa, "data": data, "torch": torch_runs}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny ResNet-18 and sizes: checks the bench runs")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections out of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per case (default 20 at 32x32, 6 at 224)")
    parser.add_argument("--blocks", type=int, default=2, help="alternating timed blocks per case (default 2)")
    parser.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--isa", help="comma-separated ONEDNN_MAX_CPU_ISA values for the isa section "
                                      "('unset' = not set; default: unset,AVX2,AVX2_VNNI,AVX512_CORE,AVX512_CORE_VNNI)")
    parser.add_argument("--isa-rounds", type=int, default=1, help="runs of each ISA value, alternating (default 1)")
    parser.add_argument("--torch-python", help="interpreter with torch==2.13.0 to run the PyTorch peer")
    parser.add_argument("--torch-peer", default=TORCH_PEER, help="path of torch_peer.py")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(*args.worker)

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    cfg = plan(args)
    net = cfg["net"]
    common = {"mode": args.mode, "weight_decay": args.weight_decay, **net}
    t_start = time.perf_counter()
    report: dict[str, Any] = {"bench": "train", "quick": args.quick, "host": host_info(),
                              "loadavg_start": [round(v, 2) for v in os.getloadavg()],
                              "settings": {**common, "ratio_target": RATIO_TARGET, "blocks": args.blocks}}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data_dir = None
        if {"train32", "train224", "data"} & set(only):
            _log("writing the CIFAR-format stand-in")
            data_dir = make_standin(tmp)

        train_rows = []
        for section in ("train32", "train224"):
            if section not in only:
                continue
            size, batch, warmup, steps, cases = cfg["sizes"][section]
            _log(f"train {size}x{size} batch {batch}: {', '.join(cases)} ({warmup} warm-up + {steps} timed steps each)")
            res = run_worker({"kind": "train", "trainer_isa": True, "size": size, "batch": batch, "warmup": warmup,
                              "steps": steps, "blocks": args.blocks, "cases": cases, "data_dir": data_dir,
                              "scratch": tmp, **common},
                             base_env(os.environ.get(ISA_VARIABLE)), tmp)
            row: dict[str, Any] = {"image_size": size, "batch": batch, "warmup_steps": warmup, **res}
            if "error" not in res:
                row["isa"] = res.pop("_isa")
                bare, model = res["bare"]["img_per_s"], res["model"]["img_per_s"]
                row["ratio_model_over_bare"] = round(model / bare, 3)
                row["meets_ratio_target"] = model / bare >= RATIO_TARGET
                # the fastest step of each is the least disturbed by other load: a steadier ratio on a busy machine
                row["ratio_min_step_bare_over_model"] = round(res["bare"]["min_step_s"] / res["model"]["min_step_s"], 3)
                if "model_cifar" in res:
                    row["ratio_model_cifar_over_bare"] = round(res["model_cifar"]["img_per_s"] / bare, 3)
                if "model_monitor" in res:
                    row["monitor_cost_ms_per_step"] = round(
                        1000 * (res["model_monitor"]["median_step_s"] - res["model"]["median_step_s"]), 1)
            train_rows.append(row)
            _log(json.dumps(row))
        if train_rows:
            report["train"] = train_rows

        if "isa" in only:
            isa = cfg["isa"]
            values = [v.strip() for v in args.isa.split(",") if v.strip()] if args.isa else isa["values"]
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in values}
            for rnd in range(max(1, args.isa_rounds)):  # rounds alternate the values: drift hits all alike
                for value in values:
                    _log(f"oneDNN ISA {value} (round {rnd + 1}): bare loop {isa['size']}x{isa['size']} "
                         f"batch {isa['batch']}")
                    res = run_worker({"kind": "isa", "trainer_isa": False, **isa, **common},
                                     base_env(None if value == "unset" else value), tmp)
                    runs[value].append(res)
                    _log(json.dumps(res))
            results: dict[str, Any] = {}
            for value, rs in runs.items():
                ok = [r["img_per_s"] for r in rs if r.get("img_per_s")]
                results[value] = {**onednn_probe(None if value == "unset" else value),"img_per_s": round(statistics.median(ok), 2) if ok else None,
                                  "median_step_s": (round(statistics.median(r["median_step_s"] for r in rs if "median_step_s" in r), 4)
                                                    if ok else None),
                                  "runs": rs}
            speeds = {k: v.get("img_per_s") for k, v in results.items() if v.get("img_per_s")}
            best = max(speeds, key=speeds.get) if speeds else None
            report["isa"] = {"image_size": isa["size"], "batch": isa["batch"], "case": "bare",
                             "trainer_sets": "AVX2 unless the user set ONEDNN_MAX_CPU_ISA (trainer/cpu.py)",
                             "results": results, "best": best,
                             "speedup_avx2_over_unset": (round(speeds["AVX2"] / speeds["unset"], 2)
                                                         if "AVX2" in speeds and "unset" in speeds else None)}

        if "data" in only:
            _log("data pipeline")
            report["data"] = run_worker({"kind": "data", "trainer_isa": True, "data_dir": data_dir, **cfg["data"]},
                                        base_env(os.environ.get(ISA_VARIABLE)), tmp)

        if "torch" in only and args.torch_python:
            rows = []
            tarch = net["arch"] if net["arch"] in ("resnet50", "resnet18") else "resnet50"
            for size, batch, warmup, steps in cfg["torch"]:
                _log(f"torch peer {size}x{size} batch {batch}")
                peer = run_torch(args.torch_python, args.torch_peer, tarch, net["width"], size, batch, warmup, steps)
                ms_row = next((r for r in train_rows if r.get("image_size") == size and "bare" in r), None)
                if ms_row and peer.get("img_per_s"):
                    peer["mindspore_bare_over_torch"] = round(ms_row["bare"]["img_per_s"] / peer["img_per_s"], 3)
                    peer["mindspore_model_over_torch"] = round(ms_row["model"]["img_per_s"] / peer["img_per_s"], 3)
                rows.append(peer)
            report["torch"] = rows
        elif "torch" in only:
            report["torch"] = None
            report["torch_skipped"] = "no --torch-python given"
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
