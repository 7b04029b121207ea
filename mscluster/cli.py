"""The ``mscluster`` command: parsing, printing and exit codes only; the work is in trainer/ and launcher/.

Exit codes: 0 success; 1 the job (or a rank) failed; 2 bad input (settings, cluster file, data,
checkpoint); 3 a host could not be reached; 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Optional, Sequence

from trainer.overrides import flatten


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``mscluster launch: error: ...``), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def seconds(text: str) -> float:
    """A finite number of seconds >= 0 (``--grace-period``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 3600, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value



def _add_set(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--set", dest="set", nargs="+", action="append", metavar="KEY=VALUE",
                        help=f"override {what} (values read as YAML scalars); repeatable")


# -- trainer commands ------------------------------------------------------------------------------

def _prepare_mindspore_process() -> None:
    """Process-wide settings that must precede ``import mindspore`` (this process's own env)."""
    from trainer.cpu import configure_cpu_backend

    configure_cpu_backend()
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ log: errors only unless the user asks


def cmd_train(args: argparse.Namespace) -> int:
    from mscluster.rank import record
    from trainer import config

    cfg = config.load(args.config, flatten(args.set))
    from mscluster import pod

    workers = pod.pod_workers(os.environ)  # a pod of Huawei's ascend-operator: one process per NPU of it
    if workers is not None:
        argv = [sys.executable, "-m", "mscluster.cli", "train", *(["--config", args.config] if args.config else []),
                *(["--set", *flatten(args.set)] if flatten(args.set) else [])]
        return pod.run_workers(argv, workers, os.environ)
    _prepare_mindspore_process()
    from trainer.faults import InjectedFault
    from trainer.train import train

    try:
        record(train)(cfg, os.environ)  # an exception leaves the error file the launcher's table shows
    except InjectedFault as exc:
        print(f"mscluster train: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _prepare_mindspore_process()
    from trainer.evaluate import evaluate

    scores = evaluate(args.checkpoint, args.data_dir, args.batch_size)
    print(f"top1={scores.top1:.4f} loss={scores.loss:.4f} images={scores.count}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _prepare_mindspore_process()
    from trainer.evaluate import predict

    for p in predict(args.checkpoint, args.images):
        print(f"{p.image}: {p.class_name} {p.probability:.4f}")
    return 0


# -- parser ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mscluster", description="Train image classifiers with MindSpore across a cluster.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="run one training process (its rank comes from the environment)")
    p.add_argument("--config", help="YAML file of training settings (or a cluster file: its train: section)")
    _add_set(p, "training settings, e.g. --set epochs=3 lr=0.1")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the test split; prints top1=<acc>")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", required=True, help="CIFAR-10 binary folder (or its parent)")
    p.add_argument("--batch-size", type=_positive_int, default=0, help="default: the checkpoint's")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="print the most likely class of each image")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files of any size")
    p.set_defaults(func=cmd_predict)

    _add_launcher_commands(sub)
    return parser


def _add_launcher_commands(sub) -> None:
    from mscluster import launch_cli

    launch_cli.add_commands(sub, _add_set)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if verbose else logging.INFO
    for name in ("trainer", "launcher", "mscluster"):
        logging.getLogger(name).setLevel(level)
    # paramiko logs its own tracebacks for failures we already report as one line
    logging.getLogger("paramiko").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from mscluster.errors import MsclusterError

    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    program = None
    if "--" in words:  # `mscluster launch c.yaml -- python train.py --lr 0.1`: the program is not ours to parse
        cut = words.index("--")
        words, program = words[:cut], words[cut + 1:]
    args = parser.parse_args(words)
    if program is not None and not hasattr(args, "program"):
        parser.error(f"{args.command} takes no program after --")
    if not hasattr(args, "program") or program is not None:
        args.program = program
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except MsclusterError as exc:
        print(f"mscluster {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"mscluster {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mscluster plan ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
