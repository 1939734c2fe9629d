"""`bus contracts check` and `bus contracts freeze`: event contracts that evolve safely."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from bus.cli.support import file_option, load
from bus.contract_history import (
    ContractSnapshot,
    current_snapshots,
    freeze,
    frozen_history,
    reference_snapshots,
)
from bus.errors import ContractError, UsageError
from bus.evolution import Change, compare_schemas

__all__ = ["COMMANDS", "MODES", "compare_contracts", "contracts"]

MODES = (
    "backward",
    "forward",
    "full",
    "backward-transitive",
    "forward-transitive",
    "full-transitive",
)


@dataclass(frozen=True)
class _Comparison:
    event: str
    against: str
    changes: list[Change]


def compare_contracts(old: ContractSnapshot | None, new: ContractSnapshot | None) -> list[Change]:
    """Every change of one event's contract, routing first, then the body's schema."""
    if old is None:
        return [Change("event", "event", "event added", True, True)]
    if new is None:
        why = "messages already queued have no contract left to be read with"
        return [Change("event", "event", "event removed", False, True, backward_why=why)]
    changes = []
    moved = "consumers bound where it used to go no longer receive it"
    for part, before, after in (
        ("exchange", old.exchange, new.exchange),
        ("routing_key", old.routing_key, new.routing_key),
        ("headers", dict(old.headers), dict(new.headers)),
    ):
        if before is not None and before != after:
            what = f"{part} moved {before!r} -> {after!r}"
            changes.append(Change(part, part, what, False, False, moved, moved))
    if old.version is not None and new.version is not None and (new.version < old.version):
        why = f"version {old.version} is already published"
        what = f"version went down {old.version} -> {new.version}"
        changes.append(Change("version", "version", what, False, False, why, why))
    return changes + compare_schemas(old.schema, new.schema)


def _pairs(
    current: Mapping[str, ContractSnapshot], previous: Mapping[str, ContractSnapshot], label: str
) -> list[_Comparison]:
    return [
        _Comparison(name, label, compare_contracts(previous.get(name), current.get(name)))
        for name in sorted(current.keys() | previous.keys())
    ]


def _render(comparison: _Comparison, mode: str) -> list[str]:
    lines = []
    for change in comparison.changes:
        if change.keyword == "event" and change.what == "event added":
            lines.append(f"  {'new event':<20} {comparison.event}")
            continue
        lines.append(f"  {change.verdict:<20} {change.path}: {change.what}")
        base = mode.removesuffix("-transitive")
        if not change.backward and base in ("backward", "full"):
            lines.append(f"  {'':<20}   backward: {change.backward_why}")
        if not change.forward and base in ("forward", "full"):
            lines.append(f"  {'':<20}   forward: {change.forward_why}")
    return lines


@click.group()
def contracts() -> None:
    """Event contracts over time: freeze their schemas, check changes against history."""


_folder_option = click.option(
    "--contracts",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Frozen contracts (default: contracts/ beside the topology file).",
)


@contracts.command()
@file_option
@_folder_option
@click.option(
    "--against",
    default=None,
    metavar="REF|FILE|DIR",
    help="A git revision, a frozen contract file or folder, or an AsyncAPI document "
    "(default: the latest frozen version of each event).",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="backward",
    show_default=True,
    help="backward: new consumers read old messages; forward: old consumers read new "
    "messages; full: both; -transitive: against every frozen version.",
)
def check(file: Path | None, folder: Path | None, against: str | None, mode: str) -> int:
    """Compare every event contract with its previous form; exit 1 on a violation."""
    loaded = load(file)
    topology_file = Path(loaded.file)
    folder = folder if folder is not None else topology_file.parent / "contracts"
    current = current_snapshots(loaded)
    comparisons: list[_Comparison] = []
    if against is not None:
        comparisons += _pairs(current, reference_snapshots(against, topology_file), against)
    history = frozen_history(folder)
    if mode.endswith("-transitive"):
        if not history and against is None:
            raise UsageError(f"{mode}: no frozen contracts in {folder} (bus contracts freeze)")
        for name, versions in history.items():
            for snapshot in versions:
                label = str(folder / name / f"{snapshot.version}.json")
                changes = compare_contracts(snapshot, current.get(name))
                comparisons.append(_Comparison(name, label, changes))
    elif against is None:
        if not history:
            raise UsageError(
                f"nothing to compare with: no --against and no frozen contracts in {folder}"
            )
        comparisons += _pairs(current, {n: v[-1] for n, v in history.items()}, str(folder))
    violations = []
    for comparison in comparisons:
        click.echo(f"{comparison.event} against {comparison.against}:")
        lines = _render(comparison, mode)
        click.echo("\n".join(lines) if lines else "  unchanged")
        frozen = history.get(comparison.event, [])
        now = current.get(comparison.event)
        if lines and now is not None and (now.version or 1) in {s.version for s in frozen}:
            click.echo(
                f"  note: version {now.version or 1} is frozen with another contract: bump "
                f"events.{comparison.event}.version and run bus contracts freeze"
            )
        violations += [
            f"{comparison.event} {c.path}" for c in comparison.changes if not c.allowed(mode)
        ]
    if violations:
        shown = ", ".join(dict.fromkeys(violations))
        raise ContractError(f"{len(violations)} change(s) break {mode} compatibility: {shown}")
    click.echo(f"ok: {len(current)} event contracts are {mode} compatible")
    return 0


@contracts.command(name="freeze")
@file_option
@_folder_option
def freeze_command(file: Path | None, folder: Path | None) -> int:
    """Write each event's schema to contracts/<event>/<version>.json (history in the repo)."""
    loaded = load(file)
    folder = folder if folder is not None else Path(loaded.file).parent / "contracts"
    for path, status in freeze(current_snapshots(loaded), folder):
        click.echo(f"{status:<10} {path}")
    return 0


COMMANDS: tuple[click.Command, ...] = (contracts,)
