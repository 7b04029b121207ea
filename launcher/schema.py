"""The cluster file as a JSON Schema (draft 2020-12), from ``launcher/settings.py``: ``mscluster schema``.

Editors use it for completion and squiggles (the YAML language server: a first line
``# yaml-language-server: $schema=cluster-file.schema.json``). It states each key's type, bounds
and choices, refuses unknown keys, and the rules between keys that a schema can say; the
validator (``launcher/config.py``) stays the judge, with the checks that need more than one file
(duplicate hosts, equal device counts on Ascend, ranks within the world size ...).
"""
from __future__ import annotations

from typing import Any

from launcher.settings import TOP

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _given(key: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Matches a file where ``key`` is given (not null) and its value matches ``schema``."""
    return {"required": [key], "properties": {key: schema}}


def _only_with(key: str, other: str, value: str) -> dict[str, Any]:
    """``key`` (given, not null) only when ``other`` is ``value``."""
    return {"if": _given(key, {"not": {"type": "null"}}), "then": _given(other, {"const": value})}


RULES = (
    # hosts: with scheduler: ssh (the default); the nodes come from the allocation with slurm
    {"if": _given("scheduler", {"const": "slurm"}), "then": {"not": {"required": ["hosts"]}},
     "else": {"required": ["hosts"]}},
    # train: sets up the built-in trainer, command: runs your own program instead
    {"not": {"required": ["command", "train"],
             "properties": {"command": {"type": "array"}, "train": {"type": "object"}}}},
    _only_with("slurm", "scheduler", "slurm"),
    _only_with("ascend", "backend", "ascend"),
    {"if": _given("cwd", {"type": "string"}), "then": _given("command", {"type": "array"})},
    # a spare takes over, or the job shrinks, when the job restarts
    *({"if": _given(key, value), "then": _given("restarts", {"type": "integer", "minimum": 1})} for key, value in (
        ("spares", {"type": "array", "minItems": 1}), ("elastic", {"type": "object"}),
        ("slurm", {"type": "object", "required": ["spares"], "properties": {"spares": {"type": "integer", "minimum": 1}}}),
        ("stragglers", {"type": "object", "required": ["action"], "properties": {"action": {"const": "exclude"}}}))),
)


def cluster_schema() -> dict[str, Any]:
    """The JSON Schema of a cluster file."""
    return {
        "$schema": DRAFT,
        "title": "mscluster cluster file",
        "description": "One YAML file that describes the cluster and the job (mscluster launch CLUSTER.yaml).",
        **TOP.schema(),
        "allOf": list(RULES),
    }
