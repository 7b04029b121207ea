"""The ``mscluster`` command: parsing, printing and exit codes only; the work is in trainer/ and launcher/.

Exit codes: 0 success; 1 the job (or a rank) failed; 2 bad input (settings, cluster file, data,
checkpoint); 3 a host could not be reached; 130 interrupted.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import shlex
import sys
from typing import Optional, Sequence

from mscluster.errors import MsclusterError
from mscluster_cli import device, jobs, monitor
from mscluster_cli.args import PAIR, Parser

DISTRIBUTION = "mscluster"


def version_text() -> str:
    """``mscluster X.Y.Z``: the installed distribution's version, else (a source checkout) setup.cfg's."""
    import importlib.metadata

    try:
        return f"{DISTRIBUTION} {importlib.metadata.version(DISTRIBUTION)}"
    except importlib.metadata.PackageNotFoundError:
        pass
    import configparser

    setup_cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg")
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    found = config.get("metadata", "version", fallback=None)
    return f"{DISTRIBUTION} {found} (not installed: source checkout)" if found else f"{DISTRIBUTION} (version unknown)"


class _Version(argparse.Action):
    """``--version``: looked up only when asked (every rank builds this parser)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(version_text() + "\n")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mscluster", description="Train image classifiers with MindSpore across a cluster.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (also after the command)")
    parser.add_argument("--version", action=_Version, help="print mscluster's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    device.add_commands(sub)  # train, eval, predict
    jobs.add_commands(sub)  # plan, ranktable, launch, submit, cancel
    monitor.add_commands(sub)  # status, logs, tensorboard
    for command in sub.choices.values():  # `mscluster launch -v x.yaml` as `mscluster -v launch x.yaml`
        if "-v" not in command._option_string_actions:
            command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                 help=argparse.SUPPRESS)  # `mscluster --help` says so once
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _check_command(parser: argparse.ArgumentParser, words: Sequence[str]) -> None:
    """A mistyped command is one line with the nearest one: ``unknown command 'lanuch', did you mean 'launch'?``."""
    commands = _subparsers(parser)
    word = next((w for w in words if not w.startswith("-")), None)  # mscluster's own options take no value
    if word is None or word in commands:
        return
    close = difflib.get_close_matches(word, list(commands), n=1, cutoff=0.6)
    hint = f", did you mean {close[0]!r}?" if close else f" (commands: {', '.join(commands)})"
    parser.exit(2, f"mscluster: error: unknown command {word!r}{hint}\n")


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, words: list[str],
                  extra: list[str], given_program: bool) -> None:
    """Words argparse could not place: the program's words without ``--``, or a second pair after one --set."""
    command = _subparsers(parser)[args.command]
    if not hasattr(args, "program") or given_program:  # no program to run, or given after --: argparse's message
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if hasattr(args, "set") and PAIR.fullmatch(extra[0]) and not extra[0].startswith("-"):
        command.error(f"{extra[0]!r} is not taken: each --set takes one key=value pair, "
                      f"write --set {extra[0]}")
    try:
        cut = words.index(extra[0], words.index(args.command) + 1)  # the program: from the first word not ours
    except ValueError:  # argparse changed the word (an option's abbreviation): no line to suggest
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    cluster = getattr(args, "cluster", None)
    if cluster and not os.path.exists(cluster) and not cluster.endswith((".yaml", ".yml")):
        # `mscluster launch python train.py`: the program's first word was taken for the cluster file
        at = words.index(cluster, words.index(args.command) + 1)
        words, cut = [*words[:at], "CLUSTER.yaml", *words[at:]], at + 1
    suggestion = shlex.join(["mscluster", *words[:cut], "--", *words[cut:]])
    command.error(f"unrecognized arguments: {' '.join(extra)}: if they are the program's, put -- before it: "
                  f"{suggestion}")


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
    _check_command(parser, words)
    args, extra = parser.parse_known_args(words)
    cluster = getattr(args, "cluster", None)
    if cluster and hasattr(args, "set") and PAIR.fullmatch(cluster) and not os.path.exists(cluster):
        _subparsers(parser)[args.command].error(
            f"{cluster!r} is taken for the cluster file: each --set takes one key=value pair, write --set {cluster}")
    if extra:
        _unrecognized(parser, args, words, extra, program is not None)
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
