"""`bus contracts check / freeze` on a git repository built in a temporary folder (no broker)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.commands import git, run_bus

TOPOLOGY = """\
version: 1
exchanges:
  shop: {type: topic}
queues:
  billing:
    bindings: [{exchange: shop, routing_key: "order.*"}]
events:
  order.placed:
    exchange: shop
    routing_key: order.placed
    model: shop_events:OrderPlaced
"""

MODEL = """\
from pydantic import BaseModel, ConfigDict


class OrderPlaced(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: str
    amount: int
"""


def bus(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_bus(repo, *args)
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode != 0:
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("error: "), done.stderr
    return done


def commit(repo: Path, message: str, **files: str) -> None:
    for name, text in files.items():
        (repo / name).write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "dev@example.com")
    git(tmp_path, "config", "user.name", "dev")
    commit(tmp_path, "first", **{"topology.yaml": TOPOLOGY, "shop_events.py": MODEL})
    return tmp_path


def test_a_renamed_field_fails_the_check_against_the_previous_commit(repo: Path) -> None:
    commit(repo, "rename", **{"shop_events.py": MODEL.replace("amount", "total")})
    done = bus(repo, "contracts", "check", "--against", "HEAD~1")
    assert done.returncode == 1
    assert "payload.amount: field removed from a closed object" in done.stdout
    assert "payload.total: required field added" in done.stdout
    assert "backward: old messages with 'amount' are refused" in done.stdout
    assert "break backward compatibility" in done.stderr
    for mode in ("forward", "full"):
        done = bus(repo, "contracts", "check", "--against", "HEAD~1", "--mode", mode)
        assert done.returncode == 1
    # The commit itself against itself: nothing changed.
    assert bus(repo, "contracts", "check", "--against", "HEAD").returncode == 0


def test_an_optional_field_is_backward_but_not_forward_compatible(repo: Path) -> None:
    commit(repo, "note", **{"shop_events.py": MODEL + '    note: str = ""\n'})
    backward = bus(repo, "contracts", "check", "--against", "HEAD~1", "--mode", "backward")
    assert backward.returncode == 0, backward.stdout + backward.stderr
    assert "backward-compatible  payload.note: optional field added to a closed object" in (
        backward.stdout
    )
    forward = bus(repo, "contracts", "check", "--against", "HEAD~1", "--mode", "forward")
    assert forward.returncode == 1
    assert "forward: new messages with 'note' are refused: old object closed" in forward.stdout


def test_a_moved_routing_key_is_breaking_in_every_mode(repo: Path) -> None:
    moved = TOPOLOGY.replace("routing_key: order.placed", "routing_key: order.created")
    commit(repo, "move", **{"topology.yaml": moved})
    for mode in ("backward", "forward", "full"):
        done = bus(repo, "contracts", "check", "--against", "HEAD~1", "--mode", mode)
        assert done.returncode == 1
        assert "breaking             routing_key: routing_key moved 'order.placed'" in done.stdout


def test_freeze_keeps_history_and_transitive_modes_check_all_of_it(repo: Path) -> None:
    done = bus(repo, "contracts", "freeze")
    assert done.returncode == 0
    frozen = json.loads((repo / "contracts" / "order.placed" / "1.json").read_text())
    assert frozen["version"] == 1
    assert frozen["exchange"] == "shop"
    assert frozen["schema"]["required"] == ["order_id", "amount"]
    assert "unchanged" in bus(repo, "contracts", "freeze").stdout

    # A new schema under a frozen version is refused; a new version is history.
    (repo / "shop_events.py").write_text(MODEL.replace("amount: int", "amount: float"))
    refused = bus(repo, "contracts", "freeze")
    assert refused.returncode == 1
    assert "bump events.order.placed.version" in refused.stderr
    assert not (repo / "contracts" / "order.placed" / "2.json").exists()
    (repo / "topology.yaml").write_text(TOPOLOGY + "    version: 2\n")
    assert bus(repo, "contracts", "freeze").returncode == 0
    assert (repo / "contracts" / "order.placed" / "2.json").exists()

    # Version 2 was frozen unchecked: against the latest version (2) nothing changed, only the
    # transitive form compares with version 1 too (integer -> number: not forward compatible).
    assert bus(repo, "contracts", "check", "--mode", "forward").returncode == 0
    transitive = bus(repo, "contracts", "check", "--mode", "forward-transitive")
    assert transitive.returncode == 1
    assert "contracts/order.placed/1.json" in transitive.stdout
    assert "payload.amount: type integer -> number (extended)" in transitive.stdout
    assert bus(repo, "contracts", "check", "--mode", "backward-transitive").returncode == 0


def test_against_a_frozen_file_and_an_asyncapi_document(repo: Path) -> None:
    assert bus(repo, "contracts", "freeze").returncode == 0
    assert bus(repo, "asyncapi", "-o", "asyncapi.json").returncode == 0
    commit(repo, "rename", **{"shop_events.py": MODEL.replace("order_id", "id")})
    for against in ("asyncapi.json", "contracts/order.placed/1.json", "contracts"):
        done = bus(repo, "contracts", "check", "--against", against)
        assert done.returncode == 1, against
        assert "payload.order_id: field removed from a closed object" in done.stdout, against


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--against", "no-such-ref"], "error: --against no-such-ref: neither a file nor a git"),
        (["--against", "shop_events.py"], "error: shop_events.py: not JSON or YAML"),
        (["--against", "topology.yaml"], "error: topology.yaml: not a frozen contract"),
        (["--against", "."], "error: .: no frozen contracts"),
        ([], "error: nothing to compare with: no --against and no frozen contracts"),
        (["--mode", "backward-transitive"], "error: backward-transitive: no frozen contracts"),
        (["--mode", "sideways"], "error: Invalid value for '--mode'"),
    ],
)
def test_invalid_input_exits_2_with_one_line(repo: Path, args: list[str], message: str) -> None:
    done = bus(repo, "contracts", "check", *args)
    assert done.returncode == 2
    assert done.stderr.startswith(message), done.stderr


def test_a_model_that_cannot_be_imported_is_invalid_input(repo: Path) -> None:
    commit(repo, "gone", **{"topology.yaml": TOPOLOGY.replace("shop_events:", "shop_gone:")})
    done = bus(repo, "contracts", "check", "--against", "HEAD~1")
    assert done.returncode == 2
    assert done.stderr.startswith("error: event order.placed: cannot import event model")
    # The same model missing in the revision checked against.
    commit(repo, "back", **{"topology.yaml": TOPOLOGY})
    done = bus(repo, "contracts", "check", "--against", "HEAD~1")
    assert done.returncode == 2
    assert done.stderr.startswith("error: contracts at HEAD~1: event order.placed: cannot import")


def test_a_revision_without_the_topology_is_invalid_input(repo: Path) -> None:
    git(repo, "mv", "topology.yaml", "bus.yaml")
    git(repo, "commit", "-q", "-m", "moved")
    done = bus(repo, "contracts", "check", "-f", "bus.yaml", "--against", "HEAD~1")
    assert done.returncode == 2
    assert done.stderr == "error: HEAD~1 has no bus.yaml\n"


def test_the_shipped_asyncapi_document_holds_the_same_contracts() -> None:
    from bus.asyncapi import asyncapi_document
    from bus.cli.contracts import compare_contracts
    from bus.contract_history import asyncapi_snapshots, current_snapshots
    from bus.topology import load_topology

    loaded = load_topology(Path(__file__).resolve().parents[2] / "topology.yaml")
    current = current_snapshots(loaded)
    document = asyncapi_document(loaded)
    exported = asyncapi_snapshots(document, "asyncapi.json")
    assert sorted(exported) == sorted(current)
    assert exported["email.requested"].headers == {"priority": "high"}
    assert (exported["order.paid"].exchange, exported["order.paid"].routing_key) == (
        "events",
        "order.paid",
    )
    assert all(compare_contracts(exported[n], current[n]) == [] for n in current)
    # A message no operation sends has no known route: only its payload is compared.
    document["operations"] = {}
    unrouted = asyncapi_snapshots(document, "asyncapi.json")
    assert unrouted["order.paid"].exchange is None
    assert all(compare_contracts(unrouted[n], current[n]) == [] for n in current)
