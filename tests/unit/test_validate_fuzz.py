"""Random and mutated topology files never crash ``bus validate``: exit 0 or 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.cli import main

SHIPPED = (Path(__file__).parents[2] / "topology.yaml").read_text(encoding="utf-8")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["1s", "10m", "quorum", "topic", "#", "a.*", "amq.x", "", "1000"]),
)
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "version", "exchanges", "queues", "bindings", "type", "exchange", "routing_key",
            "dead_letter", "retry", "delays", "arguments", "celery", "events", "model",
            "exchange_bindings", "source", "destination", "delivery_limit", "message_ttl",
        ]
    ),
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=30,
)


FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "fuzz.yaml"
    file.write_text(text, encoding="utf-8")
    code = main(["validate", "-f", str(file)])
    out, err = capsys.readouterr()
    assert code in (0, 2), err
    assert "Traceback" not in err + out
    assert "internal error" not in err
    if code == 2:
        assert err.strip(), "an invalid file must say why"
        assert all(line.startswith(f"{file}:") for line in err.splitlines()), err


@FUZZ
@given(doc=documents)
def test_random_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: object) -> None:
    _run(tmp_path, yaml.safe_dump(doc, allow_unicode=True), capsys)


@FUZZ
@given(data=st.data())
def test_mutated_shipped_topology(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: st.DataObject
) -> None:
    lines = SHIPPED.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["delete", "duplicate", "replace", "indent", "chars"]))
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "indent":
            lines[index] = "  " + lines[index]
        elif action == "chars":
            line = lines[index]
            at = data.draw(st.integers(0, max(len(line) - 1, 0)))
            junk = data.draw(st.text(alphabet=":{}[]-#&*!|>'\"%@`, \t", max_size=3))
            lines[index] = line[:at] + junk + line[at:]
        else:
            key, _, _ = lines[index].partition(":")
            value = data.draw(scalars)
            lines[index] = f"{key}: {yaml.safe_dump(value).splitlines()[0]}\n"
        if not lines:
            break
    _run(tmp_path, "".join(lines), capsys)


def test_shipped_topology_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(Path(__file__).parents[2] / "topology.yaml")]) == 0
    assert "valid" in capsys.readouterr().out
