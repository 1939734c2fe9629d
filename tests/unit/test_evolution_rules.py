"""Schema changes and the verdict Confluent Schema Registry's JSON Schema rules give them.

The expected verdicts are written out by hand from Confluent's documented rules, not taken from
running bus.evolution:

- [EVOL] Confluent, "Schema Evolution and Compatibility":
  https://docs.confluent.io/platform/current/schema-registry/fundamentals/schema-evolution.html
  BACKWARD: consumers using the new schema can read data written with the old one; FORWARD:
  consumers using the old schema can read data written with the new one; FULL: both;
  *_TRANSITIVE: against every earlier version, not only the latest.
- [JSON] Confluent's JSON Schema compatibility (JSON Schema serdes page,
  https://docs.confluent.io/platform/current/schema-registry/fundamentals/serdes-develop/serdes-json.html,
  and the explanation by Schema Registry's maintainer R. Yokota, "Understanding JSON Schema
  Compatibility", https://yokota.blog/2021/03/29/understanding-json-schema-compatibility/):
  a new schema is backward compatible when every document valid under the old schema is valid
  under the new one; open / closed / partially open content models decide what adding or
  removing a property means. Each row names the difference type Schema Registry reports
  (e.g. PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL) and whether it is a compatible one.
- FORWARD is the BACKWARD check with the two schemas swapped [EVOL], so each row's forward
  verdict is the rule of the reverse change (named after "fwd:").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from bus.evolution import compare_schemas


def closed(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "additionalProperties": False}


def opened(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


def req(schema: dict[str, Any], *names: str) -> dict[str, Any]:
    return {**schema, "required": list(names)}


S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741
N = {"type": "number"}


def field(**keywords: Any) -> dict[str, Any]:
    return closed(x=keywords)


@dataclass(frozen=True)
class Row:
    name: str
    old: dict[str, Any]
    new: dict[str, Any]
    backward: bool
    forward: bool
    rule: str


ADDRESS = closed(street=S, zip=S)
ROWS = [
    Row("optional property added, closed model", closed(a=S), closed(a=S, b=S), True, False,
        "[JSON] OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL compatible; "
        "fwd: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL incompatible"),
    Row("property removed, closed model", closed(a=S, b=S), closed(a=S), False, True,
        "[JSON] PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL incompatible; "
        "fwd: OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL compatible"),
    Row("optional property added, open model", opened(a=S), opened(a=S, b=S), False, True,
        "[JSON] PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL incompatible; "
        "fwd: PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL compatible"),
    Row("property removed, open model", opened(a=S, b=S), opened(a=S), True, False,
        "[JSON] PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL compatible; "
        "fwd: PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL incompatible"),
    Row("property with an empty schema added, open model", opened(a=S), opened(a=S, b={}),
        True, True,
        "[JSON] PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL compatible; "
        "fwd: PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL compatible"),
    Row("required property added without default, closed model", req(closed(a=S), "a"),
        req(closed(a=S, b=S), "a", "b"), False, False,
        "[JSON] REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL incompatible; "
        "fwd: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL incompatible"),
    Row("required property added with a default, closed model", closed(a=S),
        req(closed(a=S, b={**S, "default": "x"}), "b"), True, False,
        "[JSON] REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL compatible; "
        "fwd: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL incompatible"),
    Row("existing property made required, no default", closed(a=S), req(closed(a=S), "a"),
        False, True,
        "[JSON] REQUIRED_ATTRIBUTE_ADDED incompatible; fwd: REQUIRED_ATTRIBUTE_REMOVED compatible"),
    Row("existing property made required, with a default", closed(a={**S, "default": "x"}),
        req(closed(a={**S, "default": "x"}), "a"), True, True,
        "[JSON] REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED compatible; "
        "fwd: REQUIRED_ATTRIBUTE_REMOVED compatible"),
    Row("required property made optional", req(closed(a=S), "a"), closed(a=S), True, False,
        "[JSON] REQUIRED_ATTRIBUTE_REMOVED compatible; fwd: REQUIRED_ATTRIBUTE_ADDED incompatible"),
    Row("integer widened to number", field(**I), field(**N), True, False,
        "[JSON] TYPE_EXTENDED compatible; fwd: TYPE_NARROWED incompatible"),
    Row("number narrowed to integer", field(**N), field(**I), False, True,
        "[JSON] TYPE_NARROWED incompatible; fwd: TYPE_EXTENDED compatible"),
    Row("string changed to integer", field(**S), field(**I), False, False,
        "[JSON] TYPE_CHANGED incompatible both ways"),
    Row("type list extended with null", field(type="string"), field(type=["string", "null"]),
        True, False, "[JSON] TYPE_EXTENDED compatible; fwd: TYPE_NARROWED incompatible"),
    Row("string widened to anyOf [string, null]", field(**S),
        field(anyOf=[S, {"type": "null"}]), True, False,
        "[JSON] SUM_TYPE_EXTENDED compatible; fwd: SUM_TYPE_NARROWED incompatible"),
    Row("anyOf branch removed", field(anyOf=[S, I]), field(anyOf=[S]), False, True,
        "[JSON] SUM_TYPE_NARROWED incompatible; fwd: SUM_TYPE_EXTENDED compatible"),
    Row("oneOf turned into anyOf", field(oneOf=[S, I]), field(anyOf=[S, I]), True, False,
        "[JSON] COMBINED_TYPE_EXTENDED compatible; fwd: COMBINED_TYPE_CHANGED incompatible"),
    Row("allOf branch added", field(allOf=[S]), field(allOf=[S, {"maxLength": 5}]), False, True,
        "[JSON] PRODUCT_TYPE_EXTENDED incompatible; fwd: PRODUCT_TYPE_NARROWED compatible"),
    Row("maxLength added", field(**S), field(**S, maxLength=10), False, True,
        "[JSON] MAX_LENGTH_ADDED incompatible; fwd: MAX_LENGTH_REMOVED compatible"),
    Row("maxLength increased", field(**S, maxLength=10), field(**S, maxLength=20), True, False,
        "[JSON] MAX_LENGTH_INCREASED compatible; fwd: MAX_LENGTH_DECREASED incompatible"),
    Row("maxLength decreased", field(**S, maxLength=20), field(**S, maxLength=10), False, True,
        "[JSON] MAX_LENGTH_DECREASED incompatible; fwd: MAX_LENGTH_INCREASED compatible"),
    Row("minLength increased", field(**S, minLength=1), field(**S, minLength=3), False, True,
        "[JSON] MIN_LENGTH_INCREASED incompatible; fwd: MIN_LENGTH_DECREASED compatible"),
    Row("minLength removed", field(**S, minLength=3), field(**S), True, False,
        "[JSON] MIN_LENGTH_REMOVED compatible; fwd: MIN_LENGTH_ADDED incompatible"),
    Row("pattern added", field(**S), field(**S, pattern="^[A-Z]+$"), False, True,
        "[JSON] PATTERN_ADDED incompatible; fwd: PATTERN_REMOVED compatible"),
    Row("pattern changed", field(**S, pattern="^[A-Z]+$"), field(**S, pattern="^[a-z]+$"),
        False, False, "[JSON] PATTERN_CHANGED incompatible both ways"),
    Row("maximum decreased", field(**N, maximum=100), field(**N, maximum=10), False, True,
        "[JSON] MAXIMUM_DECREASED incompatible; fwd: MAXIMUM_INCREASED compatible"),
    Row("minimum decreased", field(**N, minimum=10), field(**N, minimum=0), True, False,
        "[JSON] MINIMUM_DECREASED compatible; fwd: MINIMUM_INCREASED incompatible"),
    Row("exclusiveMaximum added", field(**N), field(**N, exclusiveMaximum=5), False, True,
        "[JSON] EXCLUSIVE_MAXIMUM_ADDED incompatible; fwd: EXCLUSIVE_MAXIMUM_REMOVED compatible"),
    Row("multipleOf added", field(**I), field(**I, multipleOf=5), False, True,
        "[JSON] MULTIPLE_OF_ADDED incompatible; fwd: MULTIPLE_OF_REMOVED compatible"),
    Row("multipleOf reduced to a divisor", field(**I, multipleOf=4), field(**I, multipleOf=2),
        True, False,
        "[JSON] MULTIPLE_OF_REDUCED compatible; fwd: MULTIPLE_OF_EXPANDED incompatible"),
    Row("multipleOf changed", field(**I, multipleOf=2), field(**I, multipleOf=3), False, False,
        "[JSON] MULTIPLE_OF_CHANGED incompatible both ways"),
    Row("enum extended", field(enum=["a", "b"]), field(enum=["a", "b", "c"]), True, False,
        "[JSON] ENUM_ARRAY_EXTENDED compatible; fwd: ENUM_ARRAY_NARROWED incompatible"),
    Row("enum value removed", field(enum=["a", "b"]), field(enum=["a"]), False, True,
        "[JSON] ENUM_ARRAY_NARROWED incompatible; fwd: ENUM_ARRAY_EXTENDED compatible"),
    Row("enum value replaced", field(enum=["a", "b"]), field(enum=["a", "c"]), False, False,
        "[JSON] ENUM_ARRAY_CHANGED incompatible both ways"),
    Row("array items widened integer -> number", field(type="array", items=I),
        field(type="array", items=N), True, False,
        "[JSON] TYPE_EXTENDED (in items) compatible; fwd: TYPE_NARROWED incompatible"),
    Row("maxItems added", field(type="array"), field(type="array", maxItems=3), False, True,
        "[JSON] MAX_ITEMS_ADDED incompatible; fwd: MAX_ITEMS_REMOVED compatible"),
    Row("minItems decreased", field(type="array", minItems=2), field(type="array", minItems=1),
        True, False,
        "[JSON] MIN_ITEMS_DECREASED compatible; fwd: MIN_ITEMS_INCREASED incompatible"),
    Row("uniqueItems added", field(type="array"), field(type="array", uniqueItems=True), False,
        True, "[JSON] UNIQUE_ITEMS_ADDED incompatible; fwd: UNIQUE_ITEMS_REMOVED compatible"),
    Row("closed model opened (additionalProperties false -> true)", closed(a=S),
        {**closed(a=S), "additionalProperties": True}, True, False,
        "[JSON] ADDITIONAL_PROPERTIES_ADDED compatible; fwd: ADDITIONAL_PROPERTIES_REMOVED "
        "incompatible"),
    Row("property added, covered by a partially open model",
        {**closed(a=S), "additionalProperties": S},
        {**closed(a=S, b=S), "additionalProperties": S}, True, True,
        "[JSON] PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL compatible; "
        "fwd: PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL compatible"),
    Row("property added, not covered by a partially open model",
        {**closed(a=S), "additionalProperties": S},
        {**closed(a=S, b=I), "additionalProperties": S}, False, False,
        "[JSON] PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL incompatible; "
        "fwd: PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL incompatible"),
    Row("nested property removed from a closed model behind $ref",
        {**closed(addr={"$ref": "#/$defs/A"}), "$defs": {"A": ADDRESS}},
        {**closed(addr={"$ref": "#/$defs/A"}), "$defs": {"A": closed(street=S)}}, False, True,
        "[JSON] PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL incompatible (nested); "
        "fwd: OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL compatible"),
    Row("description and title changed", field(**S, description="a", title="A"),
        field(**S, description="b", title="B"), True, True,
        "[JSON] DESCRIPTION_CHANGED, TITLE_CHANGED compatible both ways"),
    Row("default changed", field(**S, default="a"), field(**S, default="b"), True, True,
        "[JSON] DEFAULT_CHANGED compatible both ways"),
]  # fmt: skip

MODES = {
    "backward": lambda r: r.backward,
    "forward": lambda r: r.forward,
    "full": lambda r: r.backward and r.forward,
}


def test_the_table_is_large_and_covers_each_verdict() -> None:
    assert len(ROWS) >= 30
    assert len({r.name for r in ROWS}) == len(ROWS)
    verdicts = {(r.backward, r.forward) for r in ROWS}
    assert verdicts == {(True, True), (True, False), (False, True), (False, False)}
    assert all(r.rule.startswith("[JSON]") for r in ROWS)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_verdict_under_each_mode(row: Row, mode: str) -> None:
    changes = compare_schemas(row.old, row.new)
    assert all(c.allowed(mode) for c in changes) is MODES[mode](row), (row.rule, changes)
    # The transitive form of a mode judges each pair the same way.
    assert all(c.allowed(f"{mode}-transitive") for c in changes) is MODES[mode](row)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_every_violation_names_the_path_and_why(row: Row) -> None:
    for change in compare_schemas(row.old, row.new):
        assert change.path.startswith("payload")
        assert change.what
        if not change.backward:
            assert change.backward_why, change
        if not change.forward:
            assert change.forward_why, change


def test_no_change_no_difference() -> None:
    for row in ROWS:
        assert compare_schemas(row.old, row.old) == []
        assert compare_schemas(row.new, row.new) == []


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_forward_is_backward_with_the_schemas_swapped(row: Row) -> None:
    there, back = compare_schemas(row.old, row.new), compare_schemas(row.new, row.old)
    assert all(c.forward for c in there) is all(c.backward for c in back)
    assert all(c.backward for c in there) is all(c.forward for c in back)
