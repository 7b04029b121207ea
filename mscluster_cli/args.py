"""What every subcommand's parser shares: one-line usage errors, ``--set``, and argument types."""
from __future__ import annotations

import argparse
import math
import re

# a --set pair as users write it: a dotted key (list indices are numbers), =, a value
PAIR = re.compile(r"[A-Za-z_0-9][A-Za-z0-9_.-]*=.*", re.DOTALL)


class Parser(argparse.ArgumentParser):
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def set_pair(text: str) -> str:
    """One ``--set`` pair: ``key=value`` (a bare word is refused here, before it is taken for a file)."""
    if not PAIR.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected one key=value pair, e.g. --set train.epochs=3, got {text!r}")
    return text


def add_set(parser: argparse.ArgumentParser, what: str, many: bool = False) -> None:
    """``--set``: one pair per flag (``--set a=1 --set b=2``); ``many``: a flag takes several (``train``)."""
    if many:  # `mscluster train` has no positional a pair list could swallow; ranks are started this way
        parser.add_argument("--set", dest="set", nargs="+", action="append", metavar="KEY=VALUE",
                            help=f"override {what} (values read as YAML scalars); repeatable")
        return
    parser.add_argument("--set", dest="set", nargs=1, type=set_pair, action="append", metavar="KEY=VALUE",
                        help=f"override {what} (values read as YAML scalars); one pair per --set, repeatable")
