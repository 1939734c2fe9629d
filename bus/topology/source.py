"""YAML text to plain Python data, remembering where every value came from.

PyYAML's safe *composer* gives nodes with positions; we build the data ourselves so that
duplicate keys (which plain loaders accept silently) and object-constructing tags are
errors, and so every mapping key and value can be traced back to a line and column.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from bus.errors import TopologyIssue

__all__ = ["Path", "SourceMap", "format_path", "parse_yaml"]

Path = tuple[str | int, ...]

_MAX_NODES = 200_000
_TAG = "tag:yaml.org,2002:"
_ALLOWED_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_SIMPLE_KEY = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def format_path(path: Path) -> str:
    """``queues["billing.orders"].bindings[0].exchange``: names with dots stay readable."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and set(part) <= _SIMPLE_KEY:
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


@dataclass
class SourceMap:
    """Positions (1-based line, column) of keys and values, by path into the data."""

    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """The position of ``path``, or of its nearest known ancestor."""
        probe = tuple(path)
        while True:
            if key and probe in self.keys:
                return self.keys[probe]
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return (1, 1)
            probe = probe[:-1]

    def issue(self, path: Path, message: str, *, key: bool = False) -> TopologyIssue:
        line, column = self.position(path, key=key)
        return TopologyIssue(self.file, line, column, format_path(path), message)


class _Builder:
    def __init__(self, source: SourceMap) -> None:
        self.source = source
        self.issues: list[TopologyIssue] = []
        self.count = 0
        self._constructor = yaml.SafeLoader("")

    def _at(self, node: yaml.Node) -> tuple[int, int]:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def _error(self, node: yaml.Node, path: Path, message: str) -> None:
        line, column = self._at(node)
        self.issues.append(
            TopologyIssue(self.source.file, line, column, format_path(path), message)
        )

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooLarge(node)
        self.source.values.setdefault(path, self._at(node))
        if isinstance(node, yaml.MappingNode):
            if node.tag != _TAG + "map":
                self._error(node, path, f"YAML tag {node.tag!r} is not allowed")
                return None
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                self._error(node, path, f"YAML tag {node.tag!r} is not allowed")
                return None
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.tag not in _ALLOWED_SCALAR_TAGS:
            self._error(node, path, f"YAML tag {node.tag!r} is not allowed")
            return None
        if node.tag == _TAG + "timestamp":
            return str(node.value)
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._error(node, path, f"invalid scalar: {getattr(exc, 'problem', exc)}")
            return None

    def _pairs(self, node: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node]]:
        """Key/value nodes with YAML merge keys (``<<: *anchor``) expanded; explicit keys win."""
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in sources:
                    if isinstance(source, yaml.MappingNode):
                        merged.extend(self._pairs(source))
                continue
            yield key_node, value_node
        explicit = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        seen: set[str] = set()
        for key_node, value_node in merged:
            if key_node.value not in explicit and key_node.value not in seen:
                seen.add(key_node.value)
                yield key_node, value_node

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in self._pairs(node):
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in (
                _TAG + "str",
                _TAG + "int",
                _TAG + "bool",
                _TAG + "null",
                _TAG + "float",
            ):
                self._error(key_node, path, "mapping keys must be plain scalars")
                continue
            key = str(key_node.value)
            child = (*path, key)
            if key in out:
                first = self.source.keys.get(child, (0, 0))
                self._error(
                    key_node,
                    child,
                    f"duplicate key {key!r} (first defined at line {first[0]})",
                )
                continue
            self.source.keys[child] = self._at(key_node)
            out[key] = self.build(value_node, child)
        return out


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


def parse_yaml(text: str, file: str) -> tuple[Any, SourceMap, list[TopologyIssue]]:
    """Parse one YAML document into plain data, its source map and any issues found."""
    source = SourceMap(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        return None, source, [TopologyIssue(file, line, column, "", f"YAML syntax: {problem}")]
    except yaml.YAMLError as exc:
        return None, source, [TopologyIssue(file, 1, 1, "", f"YAML error: {exc}")]
    except RecursionError:
        return None, source, [TopologyIssue(file, 1, 1, "", "YAML document is nested too deeply")]
    if node is None:
        return None, source, [TopologyIssue(file, 1, 1, "", "the file is empty")]
    builder = _Builder(source)
    try:
        data = builder.build(node, ())
    except _TooLarge as exc:
        line, column = builder._at(exc.node)
        return (
            None,
            source,
            [TopologyIssue(file, line, column, "", "document too large (alias expansion?)")],
        )
    except RecursionError:
        return None, source, [TopologyIssue(file, 1, 1, "", "YAML document is nested too deeply")]
    return data, source, builder.issues
