"""Reading YAML that a user (or an attacker) wrote, with bounds: size, nesting depth, alias expansion.

PyYAML's safe loader shares the node of an alias, so ``a: &a [*b, *b, ...]`` chains of a few
hundred bytes stand for millions of nodes: anything that walks the document then runs for hours,
and deep nesting ends in a ``RecursionError``. Here the composer counts depth as it goes, and the
composed graph is measured once with memoisation (each node visited once, whatever its aliases)
before anything walks it. The one YAML reader of cluster files and settings files.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import yaml

MAX_BYTES = 1 << 20  # a cluster file of 128 servers x 8 NPUs with device IPs is ~60 KB
MAX_DEPTH = 64
MAX_NODES = 200_000  # nodes of the document with every alias expanded


class YAMLLimitError(yaml.YAMLError):
    """The document is over one of the bounds (the message says which)."""

    def __init__(self, message: str, mark: Optional[yaml.Mark] = None):
        super().__init__(message)
        self.problem, self.problem_mark = message, mark


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: D102 - PyYAML's hook, recursive per level
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLLimitError(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# YAML 1.1 (PyYAML) reads ``1e-3`` as a string: a float needs a dot there. Users write ``lr: 1e-3`` and
# mean a number, as YAML 1.2, JSON and Python read it; this resolver (after the 1.1 ones) agrees with them.
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+\Z"), list("-+0123456789"))

# Problems where the parser notices a missing ':' , quote or bracket only lines later: the line the user
# must fix is where that key, quote or bracket began (the context mark), not where the reader gave up.
_OPENED = {"while scanning a simple key": "a key on this line has no ':' after it",
           "while scanning a quoted scalar": "a quote opened on this line is not closed",
           "while parsing a flow": "a '[' or '{' opened on this line is not closed"}


def describe_error(exc: yaml.YAMLError) -> tuple[Optional[int], str]:
    """The 1-based line a user must fix (None: unknown) and the problem in words, for a one-line message."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None) or ""
    mark = getattr(exc, "problem_mark", None)
    opened = next((why for start, why in _OPENED.items() if context.startswith(start)), None)
    if opened is not None and getattr(exc, "context_mark", None) is not None:
        mark = exc.context_mark  # type: ignore[attr-defined]
        problem = f"{problem}: {opened}"
    mark = mark or getattr(exc, "context_mark", None)
    return (mark.line + 1 if mark is not None else None), problem


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with aliases expanded; refuses cycles. Iterative, each node once."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), MAX_NODES + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YAMLLimitError("an alias refers to a node that contains it (a recursive alias)", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def compose(text: str) -> tuple[Optional[yaml.Node], yaml.SafeLoader]:
    """The document's node graph, checked against every bound, and its loader (to construct, then dispose).

    Raises:
        yaml.YAMLError: not YAML; YAMLLimitError: over a bound.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YAMLLimitError(f"larger than {MAX_BYTES // 1024} KiB")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node) > MAX_NODES:
            raise YAMLLimitError(f"its aliases expand to more than {MAX_NODES:,} nodes", node.start_mark)
    except BaseException:
        loader.dispose()
        raise
    return node, loader


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` within the bounds above."""
    node, loader = compose(text)
    try:
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
