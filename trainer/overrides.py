"""``--set key=value ...`` pairs: parsed into a nested dict, values read as YAML scalars.

Shared by ``mscluster train`` (flat trainer keys) and ``mscluster launch`` (dotted cluster keys
such as ``train.epochs=3``). Pure functions, no I/O.
"""
from __future__ import annotations

from typing import Any, Iterable

import yaml

from mscluster import safeyaml


class OverrideError(ValueError):
    """A ``--set`` pair is not of the form ``key=value``."""


def parse_value(text: str) -> Any:
    """Read one value as a YAML scalar: ``3`` -> 3, ``0.1`` -> 0.1, ``true`` -> True, ``null`` -> None."""
    try:
        value = safeyaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None and text.strip() not in ("null", "~", "None", "") else value


def parse_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``.

    Raises:
        OverrideError: a pair has no ``=`` or an empty key.
    """
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise OverrideError(f"--set {pair!r}: expected key=value")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OverrideError(f"--set {pair!r}: {part!r} is set to a value and used as a section")
            node = child
        node[parts[-1]] = parse_value(raw)
    return result


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in, section by section (neither is changed)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def flatten(groups: Iterable[Iterable[str]] | None) -> list[str]:
    """argparse's ``--set a=1 b=2 --set c=3`` (a list per flag) as one list of pairs."""
    return [pair for group in groups or [] for pair in group]
