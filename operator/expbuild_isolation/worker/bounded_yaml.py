"""Read YAML a user wrote, with every cost bounded before it is paid.

PyYAML's safe loader is safe from code execution, not from cost: a 372-byte alias bomb expands to
millions of nodes when anything walks the result (validation, an error message), 5,000 nested
brackets end in RecursionError, and a repeated key silently keeps its last value. This loader
refuses each of these with one line naming the file and the place:

- the file is at most ``max_bytes`` (read no further than that);
- nesting is at most ``max_depth`` levels (checked while composing, before Python's recursion limit);
- a document, with every alias expanded, is at most ``max_nodes`` nodes (counted on the node graph,
  whose shared nodes are counted once per reference without ever being copied); an alias that refers
  to itself is refused;
- a mapping names each key once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

MAX_BYTES = 3 * 1024 * 1024   # the API server's own request limit: a task larger than this could not be applied
MAX_DEPTH = 64
MAX_NODES = 100_000


class BadYaml(Exception):
    """The file cannot be read as bounded YAML; the message names the file and what is wrong."""


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of ``path``; BadYaml if it is longer (without reading the rest)."""
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BadYaml(f"{path}: larger than {max_bytes} bytes (the most a manifest may be)")
    return data


def load_documents(path: str | Path, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
                   max_nodes: int = MAX_NODES) -> list[Any]:
    """Every document in the YAML file ``path``. Raises FileNotFoundError, OSError or BadYaml."""
    path = Path(path)
    data = read_bounded(path, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadYaml(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_documents(text, source=str(path), max_depth=max_depth, max_nodes=max_nodes)


def parse_documents(text: str, *, source: str = "<yaml>", max_depth: int = MAX_DEPTH,
                    max_nodes: int = MAX_NODES) -> list[Any]:
    loader = None
    try:
        loader = _BoundedLoader(text, max_depth=max_depth, max_nodes=max_nodes)   # checks the characters
        documents = []
        while loader.check_node():
            node = loader.get_node()
            _check_expansion(node, max_nodes, max_depth)
            documents.append(loader.construct_document(node))
        return documents
    except yaml.YAMLError as exc:
        raise BadYaml(f"{source}: not valid YAML: {_describe(exc)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _describe(exc: yaml.YAMLError) -> str:
    """The problem and where, without PyYAML's quoted snippet of the input."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{str(exc).splitlines()[0]} (character {exc.position + 1})"
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, text: str, *, max_depth: int, max_nodes: int) -> None:
        super().__init__(text)
        self.max_depth, self.max_nodes, self.depth = max_depth, max_nodes, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > self.max_depth:
                raise ComposerError(None, None, f"nested deeper than {self.max_depth} levels",
                                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise ConstructorError(None, None, f"the key {_short(key_node.value)} appears twice; "
                                           f"write each key once", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_expansion(root: Any, max_nodes: int, max_depth: int) -> None:
    """Refuse a document whose nodes, with every alias expanded, number more than ``max_nodes`` or nest
    deeper than ``max_depth`` (a chain of aliases nests as deep as the chain is long)."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any, depth: int) -> int:
        key = id(node)
        if depth > max_depth:
            raise ComposerError(None, None, f"nested deeper than {max_depth} levels once its aliases are expanded",
                                node.start_mark)
        if key in sizes and depths[key] + depth <= max_depth:
            return sizes[key]
        if key in open_nodes:
            raise ComposerError(None, None, "an alias refers to the node that contains it", node.start_mark)
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        below = 0
        for child in children:
            total += size(child, depth + 1)
            below = max(below, depths[id(child)] + 1)
            if total > max_nodes:
                raise ComposerError(None, None, f"more than {max_nodes} values once its aliases are expanded",
                                    node.start_mark)
        open_nodes.discard(key)
        sizes[key], depths[key] = total, below
        return total

    if root is not None:
        size(root, 1)
