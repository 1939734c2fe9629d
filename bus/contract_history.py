"""Event contracts as data, now and before: topology, contracts/, AsyncAPI file, git revision.

A snapshot of a contract is what a consumer relies on: the event's exchange, routing key and
headers, and the JSON Schema of its body (pydantic ``model_json_schema`` in validation mode, the
schema ``bus asyncapi`` publishes). ``bus contracts freeze`` writes each one to
``contracts/<event>/<version>.json``; ``bus contracts check`` reads them back, or rebuilds the
snapshots of a git revision by importing that revision's models in a child process (the current
process has already imported today's).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic.errors import PydanticUserError

from bus.contracts import import_model
from bus.errors import BusError, ContractError, UsageError
from bus.topology import LoadedTopology, load_topology

__all__ = [
    "ContractSnapshot",
    "asyncapi_snapshots",
    "current_snapshots",
    "freeze",
    "frozen_history",
    "git_snapshots",
    "reference_snapshots",
]

Snapshots = dict[str, "ContractSnapshot"]


@dataclass(frozen=True)
class ContractSnapshot:
    """One event contract at one point in its history."""

    event: str
    version: int | None
    exchange: str | None  # None: unknown (an AsyncAPI message no operation sends)
    routing_key: str | None
    schema: Mapping[str, Any]
    headers: Mapping[str, Any] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "version": self.version or 1,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "headers": dict(self.headers),
            "schema": dict(self.schema),
        }

    @classmethod
    def from_data(cls, data: Any, origin: str) -> ContractSnapshot:
        keys = {"event", "version", "exchange", "routing_key", "schema"}
        if not isinstance(data, Mapping) or not keys <= data.keys():
            raise UsageError(f"{origin}: not a frozen contract (needs {', '.join(sorted(keys))})")
        if not isinstance(data["version"], int) or not isinstance(data["schema"], Mapping):
            raise UsageError(f"{origin}: 'version' must be an integer and 'schema' an object")
        return cls(
            str(data["event"]),
            data["version"],
            str(data["exchange"]),
            str(data["routing_key"]),
            data["schema"],
            dict(data.get("headers") or {}),
        )


def current_snapshots(loaded: LoadedTopology) -> Snapshots:
    """The contracts of ``loaded``, models imported from the running interpreter's path."""
    result: Snapshots = {}
    # A model that cannot be imported or has no schema is invalid input (exit 2), not a
    # violation: CI must tell "the check could not run" from "the change breaks consumers".
    for name, event in sorted(loaded.expanded.events.items()):
        try:
            model = import_model(event.model)
            schema = model.model_json_schema(mode="validation")
        except ContractError as exc:
            raise UsageError(f"event {name}: {exc}") from None
        except PydanticUserError as exc:
            raise UsageError(f"event {name}: no JSON Schema for {event.model}: {exc}") from None
        result[name] = ContractSnapshot(
            name, event.version, event.exchange, event.routing_key, schema, dict(event.headers)
        )
    return result


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not JSON or YAML: {' '.join(str(exc).split())}") from None


def frozen_history(folder: Path) -> dict[str, list[ContractSnapshot]]:
    """Every frozen version under ``folder`` (``<event>/<version>.json``), oldest first."""
    history: dict[str, list[ContractSnapshot]] = {}
    if not folder.is_dir():
        return history
    for event_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        versions = []
        for file in event_dir.glob("*.json"):
            if not file.stem.isdigit():
                raise UsageError(f"{file}: frozen contracts are named <version>.json")
            snapshot = ContractSnapshot.from_data(_read(file), str(file))
            if snapshot.version != int(file.stem) or snapshot.event != event_dir.name:
                raise UsageError(f"{file}: holds {snapshot.event} version {snapshot.version}")
            versions.append(snapshot)
        if versions:
            history[event_dir.name] = sorted(versions, key=lambda s: s.version or 1)
    return history


def freeze(snapshots: Mapping[str, ContractSnapshot], folder: Path) -> list[tuple[Path, str]]:
    """Write each contract to ``folder/<event>/<version>.json``: (path, written|unchanged).

    A frozen version is history: a different schema under the same version is refused
    (:class:`ContractError`) and nothing is written; bump ``events.NAME.version`` instead.
    """
    plan: list[tuple[Path, str, str]] = []
    conflicts = []
    for name, snapshot in sorted(snapshots.items()):
        if "/" in name or name.startswith("."):
            raise UsageError(f"event {name!r}: cannot be a folder name under {folder}")
        path = folder / name / f"{snapshot.version or 1}.json"
        text = json.dumps(snapshot.to_data(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        if path.exists():
            if _read(path) == json.loads(text):
                plan.append((path, text, "unchanged"))
                continue
            conflicts.append(f"{path} (bump events.{name}.version)")
        plan.append((path, text, "written"))
    if conflicts:
        raise ContractError("a frozen version holds a different contract: " + ", ".join(conflicts))
    for path, text, status in plan:
        if status == "written":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return [(path, status) for path, _, status in plan]


def _resolve(document: Mapping[str, Any], node: Any) -> Any:
    seen = 0
    while isinstance(node, Mapping) and "$ref" in node and seen < 20:
        ref = str(node["$ref"])
        target: Any = document
        for token in [t for t in ref.removeprefix("#").split("/") if t]:
            key = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or key not in target:
                raise UsageError(f"AsyncAPI document: $ref {ref!r} points at nothing")
            target = target[key]
        node, seen = target, seen + 1
    return node


def _relocate(node: Any) -> Any:
    """``#/components/schemas/X`` references rewritten to ``#/$defs/X``."""
    if isinstance(node, Mapping):
        return {
            k: (
                v.replace("#/components/schemas/", "#/$defs/", 1)
                if k == "$ref" and isinstance(v, str)
                else _relocate(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_relocate(v) for v in node]
    return node


def asyncapi_snapshots(document: Any, origin: str) -> Snapshots:
    """The event contracts of an AsyncAPI 3 document (as ``bus asyncapi`` writes them)."""
    if not isinstance(document, Mapping) or "asyncapi" not in document:
        raise UsageError(f"{origin}: not an AsyncAPI document (no 'asyncapi' key)")
    components = document.get("components") or {}
    defs = _relocate(components.get("schemas") or {})
    routes: dict[int, tuple[str | None, str | None]] = {}
    for operation in (document.get("operations") or {}).values():
        if not isinstance(operation, Mapping) or operation.get("action") != "send":
            continue
        channel = _resolve(document, operation.get("channel"))
        amqp = ((channel or {}).get("bindings") or {}).get("amqp") or {}
        exchange = (amqp.get("exchange") or {}).get("name", (channel or {}).get("address", ""))
        cc = (((operation.get("bindings") or {}).get("amqp") or {}).get("cc")) or [""]
        for ref in operation.get("messages") or []:
            routes[id(_resolve(document, ref))] = (str(exchange), str(cc[0]))
    result: Snapshots = {}
    for mid, raw in (components.get("messages") or {}).items():
        message = _resolve(document, raw)
        if not isinstance(message, Mapping) or "payload" not in message:
            continue
        name = str(message.get("name", mid))
        exchange, routing_key = routes.get(id(message), (None, None))
        header_props = ((message.get("headers") or {}).get("properties")) or {}
        headers = {k: v["const"] for k, v in header_props.items() if "const" in v}
        schema = {**_relocate(message["payload"]), "$defs": defs}
        result[name] = ContractSnapshot(name, None, exchange, routing_key, schema, headers)
    if not result:
        raise UsageError(f"{origin}: the AsyncAPI document has no message with a payload")
    return result


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except OSError as exc:
        raise UsageError(f"cannot run git: {exc.strerror}") from None


def git_snapshots(ref: str, topology_file: Path) -> Snapshots:
    """The contracts as they were at git revision ``ref`` of the repository holding the topology.

    The revision's files go to a temporary folder; a child interpreter loads its topology with
    today's ``bus`` and imports its models from there first.
    """
    here = topology_file.resolve().parent
    top = _git(here, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise UsageError(f"--against {ref}: not a file, and {here} is not in a git repository")
    commit = _git(here, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if commit.returncode != 0:
        raise UsageError(f"--against {ref}: neither a file nor a git revision")
    root = Path(top.stdout.decode().strip())
    relative = topology_file.resolve().relative_to(root.resolve())
    archive = _git(root, "archive", "--format=tar", commit.stdout.decode().strip())
    if archive.returncode != 0:
        raise UsageError(f"git archive {ref}: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="bus-contracts-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        old_topology = Path(tmp) / relative
        if not old_topology.is_file():
            raise UsageError(f"{ref} has no {relative}")
        # -P: the child's working folder must not shadow today's bus package.
        child = subprocess.run(
            [sys.executable, "-P", "-m", "bus.contract_history", str(old_topology), tmp],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines() or ["failed"]
        raise UsageError(f"contracts at {ref}: {lines[-1].removeprefix('error: ')}")
    data = json.loads(child.stdout)
    return {name: ContractSnapshot.from_data(d, f"{ref}:{name}") for name, d in data.items()}


def reference_snapshots(against: str, topology_file: Path) -> Snapshots:
    """``--against``: a frozen contract file or folder, an AsyncAPI file, else a git revision."""
    path = Path(against)
    if path.is_dir():
        history = frozen_history(path)
        if not history:
            raise UsageError(f"{against}: no frozen contracts (<event>/<version>.json) in it")
        return {name: versions[-1] for name, versions in history.items()}
    if path.is_file():
        data = _read(path)
        if isinstance(data, Mapping) and "asyncapi" in data:
            return asyncapi_snapshots(data, against)
        snapshot = ContractSnapshot.from_data(data, against)
        return {snapshot.event: snapshot}
    return git_snapshots(against, topology_file)


def _child(argv: list[str]) -> int:
    """In the child: print the snapshots of a checked-out revision as JSON."""
    topology, root = Path(argv[0]), argv[1]
    for folder in dict.fromkeys([str(topology.parent), root]):
        sys.path.insert(0, folder)
    try:
        loaded = load_topology(topology)
        # Modules imported before the path changed would be today's, not the revision's.
        tops = {e.model.partition(":")[0].split(".")[0] for e in loaded.expanded.events.values()}
        for name in [m for m in sys.modules if m.split(".")[0] in tops - {"bus"}]:
            del sys.modules[name]
        data = {name: s.to_data() for name, s in current_snapshots(loaded).items()}
    except BusError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
