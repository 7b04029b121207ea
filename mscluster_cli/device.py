"""The commands that run on a device: ``train`` (one rank), ``eval``, ``predict``. Parsing and printing only.

The trainer's modules (MindSpore with them) and the rank API are imported inside the commands, not
here: the other commands (``status`` on a login node, ``plan``) must not pay their start-up time.
"""
from __future__ import annotations

import argparse
import os
import sys

from mscluster_cli.args import add_set, positive_int
from trainer.overrides import flatten


def prepare_mindspore_process() -> None:
    """Process-wide settings that must precede ``import mindspore`` (this process's own env)."""
    from trainer.cpu import configure_cpu_backend  # deferred: see the module docstring

    configure_cpu_backend()
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ log: errors only unless the user asks


def cmd_train(args: argparse.Namespace) -> int:
    from mscluster import pod
    from mscluster.rank import record
    from trainer import config  # deferred: see the module docstring

    cfg = config.load(args.config, flatten(args.set))
    workers = pod.pod_workers(os.environ)  # a pod of Huawei's ascend-operator: one process per NPU of it
    if workers is not None:
        from launcher.jobplan import CLI_MODULE, own_argv  # deferred: only a pod's first process needs it

        argv = list(own_argv(sys.executable, CLI_MODULE, "train", *(["--config", args.config] if args.config else []),
                             *(["--set", *flatten(args.set)] if flatten(args.set) else [])))
        return pod.run_workers(argv, workers, os.environ)
    prepare_mindspore_process()
    from trainer.faults import InjectedFault
    from trainer.train import train

    try:
        result = record(train)(cfg, os.environ)  # an exception leaves the error file the launcher's table shows
    except InjectedFault as exc:
        print(f"mscluster train: {exc}", file=sys.stderr)
        return exc.exit_code
    from trainer.distributed import leave_now, skips_cluster_teardown

    if skips_cluster_teardown(os.environ, result.past_last_collective):  # its files are written and closed
        leave_now(0)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    prepare_mindspore_process()
    from trainer.evaluate import evaluate

    scores = evaluate(args.checkpoint, args.data_dir, args.batch_size, args.images)
    print(f"top1={scores.top1:.4f} loss={scores.loss:.4f} images={scores.count}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    prepare_mindspore_process()
    from trainer.evaluate import predict

    for p in predict(args.checkpoint, args.images):
        print(f"{p.image}: {p.class_name} {p.probability:.4f}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="run one training process (its rank comes from the environment)")
    p.add_argument("--config", help="YAML file of training settings (or a cluster file: its train: section)")
    add_set(p, "training settings, e.g. --set epochs=3 lr=0.1", many=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the test split; prints top1=<acc>")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", required=True, help="CIFAR-10 binary folder (or its parent)")
    p.add_argument("--batch-size", type=positive_int, default=0, help="default: the checkpoint's")
    p.add_argument("--images", type=positive_int, default=0, help="only the split's first N images (default: all)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="print the most likely class of each image")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files of any size")
    p.set_defaults(func=cmd_predict)
