"""Changes to pydantic models, judged from their JSON Schemas, and the README's table of them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, ConfigDict, Field

from bus.evolution import Change, compare_schemas

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    pass


def _pairs(base: type[BaseModel]) -> dict[str, list[tuple[type[BaseModel], type[BaseModel]]]]:
    """README table label -> (old model, new model) examples, on a closed or an open base."""

    def model(**fields: object) -> type[BaseModel]:
        annotations = {k: v[0] for k, v in fields.items()}  # type: ignore[index]
        defaults = {k: v[1] for k, v in fields.items() if len(v) > 1}  # type: ignore[arg-type]
        namespace = {"__annotations__": annotations, **defaults}
        return type("Event", (base,), namespace)

    return {
        "optional field added": [(model(a=(str,)), model(a=(str,), b=(str, "")))],
        "field removed": [(model(a=(str,), b=(str, "")), model(a=(str,)))],
        "required field added without a default": [(model(a=(str,)), model(a=(str,), b=(str,)))],
        "field made optional": [(model(a=(str,)), model(a=(str, "")))],
        "type widened": [
            (model(a=(int,)), model(a=(float,))),
            (model(a=(str,)), model(a=(Optional[str],))),  # noqa: UP045 (the README's example)
            (model(a=(int, Field(le=5))), model(a=(int, Field(le=10)))),
            (model(a=(Literal["x"],)), model(a=(Literal["x", "y"],))),
        ],
        "type narrowed": [
            (model(a=(float,)), model(a=(int,))),
            (model(a=(int, Field(le=10))), model(a=(int, Field(le=5)))),
            (model(a=(int, Field(ge=0))), model(a=(int, Field(ge=1)))),
            (model(a=(str,)), model(a=(str, Field(pattern="^[a-z]+$")))),
            (model(a=(Literal["x", "y"],)), model(a=(Literal["x"],))),
        ],
        "field renamed": [
            (model(a=(str,)), model(b=(str,))),
            (model(a=(str, "")), model(b=(str, ""))),
            (model(a=(str,)), model(a=(int,))),
        ],
    }


def _verdict(changes: list[Change]) -> str:
    backward = all(c.backward for c in changes)
    forward = all(c.forward for c in changes)
    return {(True, True): "compatible", (True, False): "backward", (False, True): "forward"}.get(
        (backward, forward), "breaking"
    )


def _readme_table() -> dict[str, tuple[str, str]]:
    section = README.split("## Evolving an event\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| (\w+) \| (\w+) \|$", section, flags=re.MULTILINE)
    verdicts = {"compatible", "backward", "forward", "breaking"}
    return {label: (c, o) for label, c, o in rows if {c, o} <= verdicts}


def test_the_readme_table_says_what_the_checker_does() -> None:
    table = _readme_table()
    assert len(table) == 7
    closed, opened = _pairs(Closed), _pairs(Open)
    for label, (on_closed, on_open) in table.items():
        key = next(k for k in closed if label.startswith(k))
        for (old, new), (old_open, new_open) in zip(closed[key], opened[key], strict=True):
            closed_changes = compare_schemas(old.model_json_schema(), new.model_json_schema())
            open_changes = compare_schemas(
                old_open.model_json_schema(), new_open.model_json_schema()
            )
            assert _verdict(closed_changes) == on_closed, (label, closed_changes)
            assert _verdict(open_changes) == on_open, (label, open_changes)


class Node(Closed):
    name: str
    children: list[Node] = []


class NodeV2(Closed):
    name: str
    children: list[NodeV2] = []
    weight: int = 0


def test_a_recursive_model_is_compared_once_per_level() -> None:
    changes = compare_schemas(Node.model_json_schema(), NodeV2.model_json_schema())
    assert [(c.path, c.verdict) for c in changes] == [("payload.weight", "backward-compatible")]


def test_a_renamed_field_names_both_paths_and_why() -> None:
    class Old(Closed):
        order_id: str
        amount: int

    class New(Closed):
        order_id: str
        total: int

    changes = {c.path: c for c in compare_schemas(Old.model_json_schema(), New.model_json_schema())}
    assert changes["payload.amount"].what == "field removed from a closed object"
    # Required in the old schema: old consumers refuse new messages without it, too.
    assert changes["payload.amount"].verdict == "breaking"
    assert changes["payload.amount"].forward_why == "new messages lack it and it has no default"
    assert "old messages with 'amount' are refused" in changes["payload.amount"].backward_why
    assert changes["payload.total"].what == "required field added"
    assert changes["payload.total"].verdict == "breaking"
    assert changes["payload.total"].backward_why == "old messages lack it and it has no default"


def test_a_datetime_where_a_string_was_is_narrowing() -> None:
    from datetime import datetime

    class Old(Closed):
        at: str

    class New(Closed):
        at: datetime

    (change,) = compare_schemas(Old.model_json_schema(), New.model_json_schema())
    assert (change.path, change.keyword, change.verdict) == (
        "payload.at",
        "format",
        "forward-compatible",
    )


def test_an_event_version_is_a_positive_integer() -> None:
    from bus.errors import TopologyError
    from bus.topology import parse_topology

    text = (
        "version: 1\nexchanges:\n  shop: {type: topic}\nevents:\n  order.placed:\n"
        "    exchange: shop\n    routing_key: order.placed\n    model: shop:Order\n"
    )
    assert parse_topology(text, "t.yaml").expanded.events["order.placed"].version is None
    assert (
        parse_topology(text + "    version: 3\n", "t.yaml").model.events["order.placed"].version
        == 3
    )
    for bad in ("0", '"2"', "1.5"):
        with pytest.raises(TopologyError) as caught:
            parse_topology(text + f"    version: {bad}\n", "t.yaml")
        issue = caught.value.issues[0]
        assert (issue.line, issue.path) == (9, 'events["order.placed"].version'), issue
