"""Headers-exchange matching: a binding's ``x-match`` and arguments against a message's headers.

``x-match`` is all (default) / any / all-with-x / any-with-x. all/any ignore binding arguments
starting with ``x-``; the with-x kinds only skip ``x-match`` itself. A binding argument with no
value (``None``, AMQP void) matches on presence. Values compare as :mod:`.header_terms` says.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

from bus.routing.destinations import Destination
from bus.routing.header_terms import header_term

__all__ = [
    "HeadersBinding",
    "HeadersIndex",
    "compile_headers",
    "headers_binding_matches_everything",
    "headers_binding_matches_something",
    "headers_match",
]

_X_MATCH = {"all", "any", "all-with-x", "any-with-x"}


class HeadersBinding(NamedTuple):
    any: bool
    # (name, presence-only, term); presence-only is a void binding value.
    items: tuple[tuple[str, bool, Hashable], ...]
    dest: Destination


def compile_headers(arguments: Mapping[str, Any]) -> tuple[bool, list[tuple[str, bool, Hashable]]]:
    """(is it an any-binding, the (name, presence-only, term) items it compares)."""
    x_match = arguments.get("x-match", "all")
    kind = x_match if x_match in _X_MATCH else "all"
    with_x = kind.endswith("-with-x")
    items = [
        (name, value is None, header_term(value))
        for name, value in sorted(arguments.items())
        if name != "x-match" and (with_x or not name.startswith("x-"))
    ]
    return kind.startswith("any"), items


def headers_binding_matches_something(arguments: Mapping[str, Any]) -> bool:
    """False for headers bindings no message can match (``any`` with nothing to compare)."""
    is_any, items = compile_headers(arguments)
    return not (is_any and not items)


def headers_binding_matches_everything(arguments: Mapping[str, Any]) -> bool:
    """True for headers bindings every message matches (all, nothing to compare)."""
    is_any, items = compile_headers(arguments)
    return not is_any and not items


def headers_match(binding: HeadersBinding, headers: Mapping[str, Hashable]) -> bool:
    if binding.any:
        for name, presence, term in binding.items:
            if name in headers and (presence or headers[name] == term):
                return True
        return False
    for name, presence, term in binding.items:
        if name not in headers or not (presence or headers[name] == term):
            return False
    return True


class HeadersIndex:
    """Candidate bindings found through the message's own (name, value) pairs, so a
    message is only checked against bindings that share at least one header with it."""

    def __init__(self) -> None:
        self.always: list[Destination] = []
        self.by_pair: dict[tuple[str, Hashable], list[HeadersBinding]] = {}
        self.by_name: dict[str, list[HeadersBinding]] = {}
        self.count = 0

    def add(self, arguments: Mapping[str, Any], dest: Destination) -> None:
        is_any, items = compile_headers(arguments)
        binding = HeadersBinding(is_any, tuple(items), dest)
        self.count += 1
        if not items:
            if not is_any:  # all with nothing to compare matches every message
                self.always.append(dest)
            return
        # An all-binding needs every item, so one index entry finds it; an any-binding
        # needs one item, so each of its items must find it.
        for name, presence, term in items if is_any else items[:1]:
            if presence:
                self.by_name.setdefault(name, []).append(binding)
            else:
                self.by_pair.setdefault((name, term), []).append(binding)

    def match(self, headers: Mapping[str, Hashable]) -> list[Destination]:
        found = list(self.always)
        seen: set[int] = set()
        for name, term in headers.items():
            for candidates in (self.by_pair.get((name, term)), self.by_name.get(name)):
                if not candidates:
                    continue
                for binding in candidates:
                    if id(binding) not in seen:
                        seen.add(id(binding))
                        if headers_match(binding, headers):
                            found.append(binding.dest)
        return found
