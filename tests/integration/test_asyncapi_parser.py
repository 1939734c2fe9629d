"""The AsyncAPI document of the shipped topology passes the official parser (@asyncapi/parser).

The parser is pinned in tools/asyncapi/package-lock.json and installed with ``npm ci`` into
tools/asyncapi/node_modules the first time (about 10-20 s; later runs reuse it, and npm's cache
makes a re-install work offline; see tests/support/node.py). Without Node.js and npm these
tests fail saying so, because a silently skipped check is no check.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bus.asyncapi import asyncapi_document, dump_document
from bus.cli import main
from bus.topology import load_topology
from tests.support.node import install_tool

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "asyncapi"
SHIPPED = ROOT / "topology.yaml"
VALIDATE_TIMEOUT = 120

Validate = Callable[..., subprocess.CompletedProcess[str]]


def _pinned_version() -> str:
    package = json.loads((TOOL / "package.json").read_text(encoding="utf-8"))
    return str(package["dependencies"]["@asyncapi/parser"])


@pytest.fixture(scope="session")
def validate() -> Validate:
    node, _ = install_tool("asyncapi")

    def run(*documents: Path, as_json: bool = False) -> subprocess.CompletedProcess[str]:
        flags = ["--json"] if as_json else []
        return subprocess.run(
            [node, str(TOOL / "validate.mjs"), *flags, *map(str, documents)],
            capture_output=True,
            text=True,
            timeout=VALIDATE_TIMEOUT,
            check=False,
        )

    return run


def _results(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    report = json.loads(result.stdout)
    assert report["parser"] == _pinned_version()
    return {Path(r["file"]).name: r for r in report["results"]}


def _write(document: dict[str, Any], path: Path) -> Path:
    path.write_text(dump_document(document, as_json=path.suffix == ".json"), encoding="utf-8")
    return path


def test_shipped_topology_document_passes_the_official_parser(
    validate: Validate, tmp_path: Path
) -> None:
    targets = [tmp_path / "asyncapi.yaml", tmp_path / "asyncapi.json"]
    for target in targets:
        assert main(["asyncapi", "-f", str(SHIPPED), "-o", str(target)]) == 0
    result = validate(*targets, as_json=True)
    assert result.returncode == 0, result.stdout + result.stderr
    results = _results(result)
    assert sorted(results) == ["asyncapi.json", "asyncapi.yaml"]
    for name, r in results.items():
        problems = [d for d in r["diagnostics"] if d["severity"] in ("error", "warning")]
        assert r["valid"], (name, problems)
        assert problems == [], name


def _shipped() -> dict[str, Any]:
    return asyncapi_document(load_topology(SHIPPED))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split("|")
        node = document
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split("|")
        node = document
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


# id, change to the shipped document, a fragment of the error the parser must report
BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "amqp-channel-binding-is",
        _set("channels|exchange.events|bindings|amqp|is", "exchange"),
        "channels.exchange.events.bindings.amqp",
    ),
    (
        "delivery-mode-3",
        _set("operations|send.order.created|bindings|amqp|deliveryMode", 3),
        "deliveryMode",
    ),
    (
        "operation-message-of-another-channel",
        _set(
            "operations|send.order.created|messages",
            [{"$ref": "#/channels/exchange.commands/messages/order.cancel"}],
        ),
        "asyncapi3-operation-messages-from-referred-channel",
    ),
    (
        "dangling-schema-ref",
        _drop("components|schemas|OrderCreated"),
        "#/components/schemas/OrderCreated",
    ),
    ("missing-info", _drop("info"), "info"),
    ("wrong-action", _set("operations|receive.cache.api|action", "consume"), "action"),
]


@pytest.fixture(scope="module")
def broken_results(
    validate: Validate, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """Every broken document through one parser process: one node start-up for all."""
    folder = tmp_path_factory.mktemp("broken")
    paths = []
    for ident, mutate, _ in BROKEN:
        document = copy.deepcopy(_shipped())
        mutate(document)
        paths.append(_write(document, folder / f"{ident}.yaml"))
    garbage = folder / "unparsable.yaml"
    garbage.write_text("asyncapi: 3.0.0\nchannels: [unclosed\n", encoding="utf-8")
    result = validate(*paths, garbage, as_json=True)
    assert result.returncode == 1, result.stdout + result.stderr
    return _results(result)


@pytest.mark.parametrize(("ident", "expected"), [(i, e) for i, _, e in BROKEN])
def test_broken_document_is_rejected(
    broken_results: dict[str, dict[str, Any]], ident: str, expected: str
) -> None:
    r = broken_results[f"{ident}.yaml"]
    assert not r["valid"]
    errors = [d for d in r["diagnostics"] if d["severity"] == "error"]
    assert any(expected in f"{d['code']} {d['path']}: {d['message']}" for d in errors), errors


def test_unparsable_document_is_rejected(broken_results: dict[str, dict[str, Any]]) -> None:
    r = broken_results["unparsable.yaml"]
    assert not r["valid"]
    assert r["errors"] >= 1


def test_text_mode_exit_code_and_verdicts(validate: Validate, tmp_path: Path) -> None:
    good = _write(_shipped(), tmp_path / "good.yaml")
    bad_document = _shipped()
    _drop("components|schemas|OrderCreated")(bad_document)
    bad = _write(bad_document, tmp_path / "bad.yaml")
    result = validate(good, bad)
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert f"{good}: valid: @asyncapi/parser {_pinned_version()}: 0 errors, 0 warnings" in lines
    assert any(line.startswith(f"{bad}: invalid: @asyncapi/parser") for line in lines)
    assert any(line.startswith(f"{bad}: error invalid-ref") for line in lines)
    only_good = validate(good)
    assert only_good.returncode == 0, only_good.stdout
    assert only_good.stdout.splitlines()[-1].startswith("valid: @asyncapi/parser")


def test_missing_file_is_a_usage_error(validate: Validate, tmp_path: Path) -> None:
    result = validate(tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_lockfile_pins_the_parser() -> None:
    lock = json.loads((TOOL / "package-lock.json").read_text(encoding="utf-8"))
    pinned = lock["packages"]["node_modules/@asyncapi/parser"]["version"]
    assert pinned == _pinned_version()
    assert lock["packages"]["node_modules/@asyncapi/parser"]["integrity"].startswith("sha512-")
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "node_modules/" in ignored
