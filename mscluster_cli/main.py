"""The ``mscluster`` command: parsing, printing and exit codes only; the work is in trainer/ and launcher/.

Exit codes: 0 success; 1 the job (or a rank) failed; 2 bad input (settings, cluster file, data,
checkpoint); 3 a host could not be reached; 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from mscluster.errors import MsclusterError
from mscluster_cli import device, jobs, monitor
from mscluster_cli.args import Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mscluster", description="Train image classifiers with MindSpore across a cluster.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    device.add_commands(sub)  # train, eval, predict
    jobs.add_commands(sub)  # plan, ranktable, launch, submit, cancel
    monitor.add_commands(sub)  # status, logs, tensorboard
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if verbose else logging.INFO
    for name in ("trainer", "launcher", "mscluster", "mscluster_cli"):
        logging.getLogger(name).setLevel(level)
    # paramiko logs its own tracebacks for failures we already report as one line
    logging.getLogger("paramiko").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def main(argv: Optional[Sequence[str]] = None) -> int:
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
