"""What every subcommand's parser shares: one-line usage errors, ``--set``, and argument types."""
from __future__ import annotations

import argparse
import math


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


def add_set(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--set", dest="set", nargs="+", action="append", metavar="KEY=VALUE",
                        help=f"override {what} (values read as YAML scalars); repeatable")
