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


def merge(base: dict[str, Any], overrides: dict[str, Any], lists: bool = False,
          _path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in, section by section (neither is changed).

    Args:
        lists: a part of a key that is a number indexes a list of ``base`` (``hosts.0.devices=4``); in a
            mapping it is a key (``device_ips.3``, the file's integer 3 where it has one).

    Raises:
        OverrideError: (``lists``) an index out of range, a number on what is neither list nor mapping,
            a word on a list.
    """
    merged = dict(base)
    for key, value in overrides.items():
        path = _path + (key,)
        if lists and key.isdigit() and int(key) in merged:
            key = int(key)  # type: ignore[assignment]
        current = merged.get(key)
        if lists and isinstance(value, dict) and isinstance(current, list):
            merged[key] = _merge_list(current, value, path)
        elif isinstance(value, dict) and isinstance(current, dict):
            merged[key] = merge(current, value, lists, path)
        elif lists and isinstance(value, dict) and any(k.isdigit() for k in value):
            index = next(k for k in value if k.isdigit())
            raise OverrideError(f"--set {'.'.join(path + (index,))}: {'.'.join(path)} is not a list"
                                + ("" if current is not None else " (the file has none)"))
        else:
            merged[key] = value
    return merged


def _merge_list(items: list, overrides: dict[str, Any], path: tuple[str, ...]) -> list:
    merged = list(items)
    where = ".".join(path)
    for key, value in overrides.items():
        if not key.isdigit():
            raise OverrideError(f"--set {where}.{key}: {where} is a list: give an entry's number, e.g. {where}.0")
        index = int(key)
        if index >= len(merged):
            raise OverrideError(f"--set {where}.{key}: {where} has {len(merged)} entries "
                                f"({f'0 to {len(merged) - 1}' if merged else 'none'})")
        if isinstance(value, dict) and isinstance(merged[index], dict):
            merged[index] = merge(merged[index], value, True, path + (key,))
        else:
            merged[index] = value
    return merged


def flatten(groups: Iterable[Iterable[str]] | None) -> list[str]:
    """argparse's ``--set a=1 b=2 --set c=3`` (a list per flag) as one list of pairs."""
    return [pair for group in groups or [] for pair in group]
