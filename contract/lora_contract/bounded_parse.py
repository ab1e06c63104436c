"""Parse user-written JSON and YAML with bounded nesting, never a RecursionError.

Python's json and PyYAML recurse once per nesting level: 200 KB of `[[[...]]]` in a manifest or
a model config.json raises RecursionError, which no caller expects (a traceback from the CLI, a
reconcile that fails on every resync with no condition on the job). Every path that parses user
data (manifests for `lorajob validate`/`plan`, config.json from a file, a ConfigMap or a URL)
goes through here, and a too-deep document gets `TooDeepError` naming its source instead.

JSON is scanned for its bracket depth before it is parsed (strings removed first, then a running
sum over the brackets: C-speed, no recursion). YAML is composed by a loader that counts its
open collections, and the nodes its aliases expand to ("billion laughs": a few lines of anchors
that become millions of values for every later consumer).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

import yaml
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent

# Real manifests and config.json files nest fewer than 10 levels; 64 leaves room for anything a
# person writes and stays far below Python's recursion limit (1000) in every later consumer.
MAX_DEPTH = 64
# A LoRAJob has about a hundred values; 100k per document is any real one, and stops alias
# expansion early.
MAX_YAML_NODES = 100_000

# A string runs to its closing quote or, unterminated, to the end of the text (json.loads then
# reports it): every match that starts succeeds without backtracking, so the scan is linear even
# for 1 MiB of `"\"\"\"...` (a pattern that must find the closing quote retries from every
# escaped quote: quadratic, 70 s for 80 KB).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\(?:.|$)[^"\\]*)*(?:"|$)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class TooDeepError(ValueError):
    """A document nested (or expanding) past the limits; the message names its source."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


def json_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest (outside strings); 0 for a scalar."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(_BRACKET_STEP[b] for b in brackets), default=0)


def load_json(text: str, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(text)` for a text nested at most `max_depth` levels, else TooDeepError.
    json.JSONDecodeError passes through for the caller's own wording."""
    depth = json_depth(text)
    if depth > max_depth:
        raise TooDeepError(source, _too_deep(max_depth, f" ({depth} levels)"))
    try:
        return json.loads(text)
    except RecursionError:  # not reachable after the scan; kept so no traceback can escape
        raise TooDeepError(source, _too_deep(max_depth, "")) from None


def _too_deep(limit: int, found: str) -> str:
    return f"nested more than {limit} levels deep{found}; nothing real nests so deep"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses deep nesting and runaway alias expansion."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_YAML_NODES
    source = "<yaml>"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._anchor_sizes: dict[str, int] = {}

    def compose_document(self) -> Any:
        """Anchors live within one document, and so does the count: a file of many LoRAJobs
        is as welcome as one."""
        self._nodes = 0
        self._anchor_sizes = {}
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self._anchor_sizes.get(str(event.anchor), 1))
            return node
        opens = isinstance(event, SequenceStartEvent | MappingStartEvent)
        if opens:
            self._depth += 1
            if self._depth > self.max_depth:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise TooDeepError(self.source, _too_deep(self.max_depth, f" at line {line}"))
        start = self._nodes
        self._count(1)
        node = super().compose_node(parent, index)
        if event.anchor is not None:
            self._anchor_sizes[str(event.anchor)] = self._nodes - start
        if opens:
            self._depth -= 1
        return node

    def _count(self, nodes: int) -> None:
        self._nodes += nodes
        if self._nodes > self.max_nodes:
            raise TooDeepError(
                self.source,
                f"a document expands to more than {self.max_nodes} values (aliases included)",
            )


def load_yaml_all(
    text: str, source: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_YAML_NODES
) -> list[Any]:
    """Every document of a YAML text (safe types only), bounded; yaml.YAMLError passes through."""
    loader = type(
        "BoundedLoader",
        (_BoundedLoader,),
        {"max_depth": max_depth, "max_nodes": max_nodes, "source": source},
    )
    return list(yaml.load_all(text, Loader=loader))  # a SafeLoader subclass: safe types only
