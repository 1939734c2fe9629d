"""Compatibility of two JSON Schemas, keyword by keyword, after Confluent Schema Registry's rules.

Definitions (Confluent Schema Registry, "Schema Evolution and Compatibility"):

- **backward**: consumers on the *new* schema accept messages written with the *old* one
  (upgrade consumers first; messages already queued stay readable);
- **forward**: consumers on the *old* schema accept messages written with the *new* one
  (upgrade producers first; consumers not yet deployed keep working);
- **full**: both.

A JSON Schema is a validator, so "accept" means "validate": a change is backward compatible when
every document valid under the old schema is valid under the new one. As Schema Registry does,
the forward check is the backward check with the two schemas swapped, so each rule below is
written once, as "data written with schema W, read with schema R", and run both ways.

Rules that depend on the content model of an object (``additionalProperties``):

- closed (``false``, pydantic ``extra="forbid"``): a property added is backward compatible
  (old messages never carried it), a property removed is not (old messages that carry it are
  rejected);
- open (absent or ``true``): a property added is not backward compatible (old messages may carry
  it with any value), unless its schema is empty; a property removed is;
- partially open (a schema): a property added or removed is compatible when that schema covers it.

Narrowing changes are not backward compatible: type narrowed or changed, a maximum lowered or
added, a minimum raised or added, ``pattern``/``format``/``multipleOf``/``uniqueItems`` added or
changed, an enum value removed, a union branch removed, a required property added without a
default. Widening changes are. Titles and descriptions are ignored; default changes are reported
as compatible.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from bus.errors import UsageError

__all__ = ["Change", "Difference", "compare_schemas", "differences"]

Schema = Mapping[str, Any]

# Bounds: (keyword, True when a larger value accepts more).
_BOUNDS = (
    ("maxLength", True),
    ("minLength", False),
    ("maximum", True),
    ("minimum", False),
    ("exclusiveMaximum", True),
    ("exclusiveMinimum", False),
    ("maxItems", True),
    ("minItems", False),
    ("maxProperties", True),
    ("minProperties", False),
)
_SUMS = ("anyOf", "oneOf")
_CLOSED: dict[str, Any] = {"not": {}}
_OBJECT_KEYWORDS = {"properties", "required", "additionalProperties", "patternProperties"}


@dataclass(frozen=True)
class Difference:
    """One change seen from a writer schema to a reader schema."""

    path: str
    keyword: str
    what: str
    compatible: bool  # data valid under the writer schema is valid under the reader schema
    why: str = ""


@dataclass(frozen=True)
class Change:
    """One change from the old schema to the new one, judged both ways."""

    path: str
    keyword: str
    what: str
    backward: bool
    forward: bool
    backward_why: str = ""
    forward_why: str = ""

    @property
    def verdict(self) -> str:
        if self.backward and self.forward:
            return "compatible"
        if self.backward:
            return "backward-compatible"
        if self.forward:
            return "forward-compatible"
        return "breaking"

    def allowed(self, mode: str) -> bool:
        """Whether ``mode`` (backward, forward, full; -transitive alike) accepts this change."""
        base = mode.removesuffix("-transitive")
        if base == "backward":
            return self.backward
        if base == "forward":
            return self.forward
        return self.backward and self.forward


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(root: Schema, ref: str) -> Any:
    if not ref.startswith("#"):
        raise UsageError(f"$ref {ref!r}: only references inside the same document are supported")
    node: Any = root
    for token in [t for t in ref[1:].split("/") if t]:
        key = _unescape(token)
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise UsageError(f"$ref {ref!r} points at nothing")
    return node


def _normal(node: Any) -> dict[str, Any]:
    if node is True or node is None:
        return {}
    if node is False:
        return dict(_CLOSED)
    if not isinstance(node, Mapping):
        raise UsageError(f"not a JSON Schema: {_text(node)[:60]}")
    result = dict(node)
    if "const" in result and "enum" not in result:
        result["enum"] = [result.pop("const")]
    return result


def _types(schema: Schema) -> frozenset[str] | None:
    kind = schema.get("type")
    if kind is None:
        return None
    return frozenset([kind] if isinstance(kind, str) else kind)


def _accepts(types: frozenset[str], kind: str) -> bool:
    return kind in types or (kind == "integer" and "number" in types)


def _label(types: frozenset[str] | None) -> str:
    return "any" if types is None else "|".join(sorted(types))


def _openness(node: Any) -> str:
    if node is None or node is True or node == {}:
        return "open"
    if node is False or node == _CLOSED:
        return "closed"
    return "partial"


class _Differ:
    """Differences seen when data written with one schema is read with another."""

    def __init__(self, writer_root: Schema, reader_root: Schema, writer: str, reader: str):
        self.roots = (writer_root, reader_root)
        self.writer, self.reader = writer, reader
        self._active: set[tuple[str, str]] = set()

    def _deref(self, node: Any, side: int) -> tuple[dict[str, Any], str]:
        node = _normal(node)
        seen: list[str] = []
        while "$ref" in node:
            ref = str(node["$ref"])
            if ref in seen:
                raise UsageError(f"$ref {ref!r} refers to itself")
            seen.append(ref)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**_normal(_pointer(self.roots[side], ref)), **siblings}
        return node, "|".join(seen)

    def diff(self, writer: Any, reader: Any, path: str) -> list[Difference]:
        w, wref = self._deref(writer, 0)
        r, rref = self._deref(reader, 1)
        key = (wref, rref)
        if wref and rref:
            if key in self._active:  # a recursive model: compared already further up
                return []
            self._active.add(key)
        try:
            return list(self._compare(w, r, path))
        finally:
            self._active.discard(key)

    def _ok(self, writer: Any, reader: Any, path: str) -> bool:
        return all(d.compatible for d in self.diff(writer, reader, path))

    def _compare(self, w: dict[str, Any], r: dict[str, Any], path: str) -> Iterator[Difference]:
        combined = [k for k in (*_SUMS, "allOf") if k in w or k in r]
        if combined:
            yield from self._combined(w, r, path)
            return
        if w.get("not") == {} or r.get("not") == {}:
            if w != r:
                ok = w.get("not") == {}
                yield Difference(path, "schema", "schema changed to/from 'nothing'", ok)
            return
        stop = False
        for d in self._type(w, r, path):
            stop = stop or (not d.compatible and d.keyword == "type" and "changed" in d.what)
            yield d
        if stop:
            return
        yield from self._enum(w, r, path)
        yield from self._bounds(w, r, path)
        yield from self._exact(w, r, path)
        if "items" in w or "items" in r:
            yield from self._items(w, r, path)
        if _OBJECT_KEYWORDS & (w.keys() | r.keys()):
            yield from self._object(w, r, path)
        if "default" in w and "default" in r and w["default"] != r["default"]:
            what = f"default {_text(w['default'])} -> {_text(r['default'])}"
            yield Difference(path, "default", what, True)

    def _type(self, w: Schema, r: Schema, path: str) -> Iterator[Difference]:
        wt, rt = _types(w), _types(r)
        if wt == rt:
            return
        what = f"type {_label(wt)} -> {_label(rt)}"
        if rt is None:
            yield Difference(path, "type", f"{what} (extended)", True)
        elif wt is None:
            why = f"{self.writer} messages may hold any type here"
            yield Difference(path, "type", f"{what} (narrowed)", False, why)
        elif all(_accepts(rt, t) for t in wt):
            yield Difference(path, "type", f"{what} (extended)", True)
        elif any(_accepts(rt, t) or (t == "number" and "integer" in rt) for t in wt):
            why = f"{self.writer} messages may hold a {_label(wt)} the {self.reader} schema refuses"
            yield Difference(path, "type", f"{what} (narrowed)", False, why)
        else:
            why = f"no {self.writer} value is a {_label(rt)}"
            yield Difference(path, "type", f"{what} (changed)", False, why)

    def _enum(self, w: Schema, r: Schema, path: str) -> Iterator[Difference]:
        if "enum" not in w and "enum" not in r:
            return
        if "enum" not in r:
            yield Difference(path, "enum", "enum removed (any value)", True)
            return
        allowed = {_text(v) for v in r["enum"]}
        if "enum" not in w:
            why = f"{self.writer} messages may hold other values"
            yield Difference(path, "enum", f"enum added: {sorted(allowed)}", False, why)
            return
        before = {_text(v) for v in w["enum"]}
        if before == allowed:
            return
        lost = sorted(before - allowed)
        if not lost:
            added = ", ".join(sorted(allowed - before))
            yield Difference(path, "enum", f"enum extended with {added}", True)
        else:
            why = f"{self.writer} messages may hold {', '.join(lost)}"
            gained = sorted(allowed - before)
            what = f"enum value {', '.join(lost)} removed" + (
                f", {', '.join(gained)} added" if gained else ""
            )
            yield Difference(path, "enum", what, False, why)

    def _bounds(self, w: Schema, r: Schema, path: str) -> Iterator[Difference]:
        for keyword, larger_is_wider in _BOUNDS:
            old, new = w.get(keyword), r.get(keyword)
            if old == new or isinstance(old, bool) or isinstance(new, bool):
                continue
            if new is None:
                yield Difference(path, keyword, f"{keyword} {old} removed", True)
            elif old is None:
                why = f"{self.writer} messages need not respect {keyword} {new}"
                yield Difference(path, keyword, f"{keyword} {new} added", False, why)
            else:
                wider = new > old if larger_is_wider else new < old
                why = "" if wider else f"{self.writer} messages may exceed {keyword} {new}"
                change = "increased" if new > old else "decreased"
                yield Difference(path, keyword, f"{keyword} {change} {old} -> {new}", wider, why)

    def _exact(self, w: Schema, r: Schema, path: str) -> Iterator[Difference]:
        for keyword in ("pattern", "format"):
            old, new = w.get(keyword), r.get(keyword)
            if old == new:
                continue
            if new is None:
                yield Difference(path, keyword, f"{keyword} {old!r} removed", True)
            else:
                why = f"{self.writer} messages need not match {keyword} {new!r}"
                what = (
                    f"{keyword} {new!r} added" if old is None else f"{keyword} {old!r} -> {new!r}"
                )
                yield Difference(path, keyword, what, False, why)
        old, new = w.get("multipleOf"), r.get("multipleOf")
        if old != new:
            if new is None:
                yield Difference(path, "multipleOf", f"multipleOf {old} removed", True)
            elif old is not None and new and (old / new) == int(old / new):
                yield Difference(path, "multipleOf", f"multipleOf {old} -> {new} (reduced)", True)
            else:
                why = f"{self.writer} values need not be multiples of {new}"
                yield Difference(path, "multipleOf", f"multipleOf {old} -> {new}", False, why)
        if bool(w.get("uniqueItems")) != bool(r.get("uniqueItems")):
            if r.get("uniqueItems"):
                why = f"{self.writer} arrays may repeat items"
                yield Difference(path, "uniqueItems", "uniqueItems added", False, why)
            else:
                yield Difference(path, "uniqueItems", "uniqueItems removed", True)

    def _items(self, w: Schema, r: Schema, path: str) -> Iterator[Difference]:
        old, new = w.get("items"), r.get("items")
        if isinstance(old, list) or isinstance(new, list):
            old_list = old if isinstance(old, list) else []
            new_list = new if isinstance(new, list) else []
            for i, (a, b) in enumerate(zip(old_list, new_list, strict=False)):
                yield from self.diff(a, b, f"{path}[{i}]")
            return
        yield from self.diff(
            old if old is not None else {}, new if new is not None else {}, f"{path}[]"
        )

    def _cover(self, obj: Schema, name: str) -> Any:
        """The schema ``obj`` applies to a property it does not declare."""
        for pattern, schema in (obj.get("patternProperties") or {}).items():
            if re.search(pattern, name):
                return schema
        return obj.get("additionalProperties", True)

    def _object(self, w: Schema, r: Schema, path: str) -> Iterator[Difference]:
        wp: Mapping[str, Any] = w.get("properties") or {}
        rp: Mapping[str, Any] = r.get("properties") or {}
        wreq, rreq = set(w.get("required") or ()), set(r.get("required") or ())
        for name in sorted(wp.keys() | rp.keys()):
            where = f"{path}.{name}"
            if name in wp and name in rp:
                yield from self.diff(wp[name], rp[name], where)
            elif name in rp:
                yield self._declared_by_reader(w, name, rp[name], name in rreq, where)
            else:
                yield self._declared_by_writer(r, name, wp[name], where)
        for name in sorted((rreq - wreq) & wp.keys() & rp.keys()):
            default = "default" in self._deref(rp[name], 1)[0]
            why = "" if default else f"{self.writer} messages may lack it"
            what = "field became required" + (" (with a default)" if default else "")
            yield Difference(f"{path}.{name}", "required", what, default, why)
        for name in sorted((wreq - rreq) & wp.keys() & rp.keys()):
            yield Difference(f"{path}.{name}", "required", "field no longer required", True)
        yield from self._additional(w, r, path)

    def _declared_by_reader(
        self, w: Schema, name: str, schema: Any, required: bool, where: str
    ) -> Difference:
        kind = "required field" if required else "optional field"
        resolved = self._deref(schema, 1)[0]
        if required and "default" not in resolved:
            why = f"{self.writer} messages lack it and it has no default"
            return Difference(where, "property", f"{kind} added", False, why)
        cover = self._cover(w, name)
        model = _openness(cover)
        if model == "closed":
            return Difference(where, "property", f"{kind} added to a closed object", True)
        if model == "open":
            if not {k: v for k, v in resolved.items() if k not in ("title", "description")}:
                return Difference(where, "property", f"{kind} with an empty schema added", True)
            why = f"the {self.writer} object is open: its messages may carry {name!r} of any type"
            return Difference(where, "property", f"{kind} added to an open object", False, why)
        ok = self._ok(cover, schema, where)
        why = "" if ok else f"the {self.writer} schema allowed {name!r} with values it now refuses"
        return Difference(where, "property", f"{kind} added to a partially open object", ok, why)

    def _declared_by_writer(self, r: Schema, name: str, schema: Any, where: str) -> Difference:
        cover = self._cover(r, name)
        model = _openness(cover)
        if model == "open":
            return Difference(where, "property", "field removed from an open object", True)
        if model == "closed":
            why = f"{self.writer} messages with {name!r} are refused: {self.reader} object closed"
            return Difference(where, "property", "field removed from a closed object", False, why)
        ok = self._ok(schema, cover, where)
        why = "" if ok else f"the {self.reader} additionalProperties do not cover {name!r}"
        return Difference(where, "property", "field removed from a partially open object", ok, why)

    def _additional(self, w: Schema, r: Schema, path: str) -> Iterator[Difference]:
        old, new = w.get("additionalProperties", True), r.get("additionalProperties", True)
        before, after = _openness(old), _openness(new)
        if before == after == "partial":
            yield from self.diff(old, new, f"{path}.*")
            return
        if before == after:
            return
        what = f"object {before} -> {after}"
        if after == "open" or before == "closed":
            yield Difference(path, "additionalProperties", what, True)
        else:
            why = f"{self.writer} messages may carry fields the {self.reader} schema refuses"
            yield Difference(path, "additionalProperties", what, False, why)

    def _combined(self, w: dict[str, Any], r: dict[str, Any], path: str) -> Iterator[Difference]:
        wk = next((k for k in (*_SUMS, "allOf") if k in w), None)
        rk = next((k for k in (*_SUMS, "allOf") if k in r), None)
        # oneOf/allOf -> anyOf accepts more; any other switch accepts different documents.
        if wk is not None and rk is not None and wk != rk and rk != "anyOf":
            why = f"{wk} -> {rk} accepts different documents"
            yield Difference(path, rk, f"combination changed {wk} -> {rk}", False, why)
            return
        wb = list(w[wk]) if wk is not None else [{k: v for k, v in w.items()}]
        rb = list(r[rk]) if rk is not None else [{k: v for k, v in r.items()}]
        if wk == "allOf" or rk == "allOf":
            yield from self._product(wb, rb, rk == "allOf", path)
            return
        keyword = rk or wk or "anyOf"
        used: set[int] = set()
        for i, branch in enumerate(wb):
            trials = [(self.diff(branch, other, path), j) for j, other in enumerate(rb)]
            diffs, j = min(trials, key=lambda t: (sum(not d.compatible for d in t[0]), t[1] != i))
            kinds = _types(self._deref(branch, 0)[0]) or frozenset()
            same_type = any(
                all(_accepts(_types(self._deref(o, 1)[0]) or kinds, k) for k in kinds) for o in rb
            )
            if same_type or all(d.compatible for d in diffs):
                used.add(j)
                yield from diffs
            else:
                label = _label(_types(self._deref(branch, 0)[0]))
                why = f"{self.writer} messages may hold a {label} here"
                yield Difference(path, keyword, f"union branch {label} removed", False, why)
        for j, branch in enumerate(rb):
            if j not in used:
                label = _label(_types(self._deref(branch, 1)[0]))
                yield Difference(path, keyword, f"union branch {label} added", True)

    def _product(
        self, wb: list[Any], rb: list[Any], reader_all: bool, path: str
    ) -> Iterator[Difference]:
        # allOf: every reader branch must accept the writer's data.
        for j, branch in enumerate(rb):
            if not any(self._ok(part, branch, path) for part in wb) and not (
                reader_all and len(wb) == 1 and self._ok(wb[0], branch, path)
            ):
                why = f"{self.writer} messages need not satisfy allOf branch {j}"
                yield Difference(path, "allOf", f"allOf branch {j} added or narrowed", False, why)
        if len(rb) < len(wb):
            yield Difference(path, "allOf", "allOf branches removed", True)


def differences(
    writer: Schema, reader: Schema, *, writer_name: str = "old", reader_name: str = "new"
) -> list[Difference]:
    """What changes when data written with ``writer`` is read with ``reader``."""
    return _Differ(writer, reader, writer_name, reader_name).diff(writer, reader, "payload")


def compare_schemas(old: Schema, new: Schema) -> list[Change]:
    """Every change from ``old`` to ``new``, each judged backward and forward."""
    backward = differences(old, new, writer_name="old", reader_name="new")
    forward = differences(new, old, writer_name="new", reader_name="old")
    keys: dict[tuple[str, str], None] = {}
    for d in (*backward, *forward):
        keys.setdefault((d.path, d.keyword), None)
    changes = []
    for key in keys:
        back = [d for d in backward if (d.path, d.keyword) == key]
        fore = [d for d in forward if (d.path, d.keyword) == key]
        if not back and all(d.compatible for d in fore):
            continue  # only visible read the other way round, and harmless that way
        what = "; ".join(d.what for d in back) or "; ".join(f"(reversed) {d.what}" for d in fore)
        changes.append(
            Change(
                key[0],
                key[1],
                what,
                backward=all(d.compatible for d in back),
                forward=all(d.compatible for d in fore),
                backward_why=next((d.why for d in back if not d.compatible), ""),
                forward_why=next((d.why for d in fore if not d.compatible), ""),
            )
        )
    return changes
