"""The public API is what each package's ``__all__`` says, and changes to it show here.

The three packages' exports are pinned: adding or removing a public name means editing this
file (and the CHANGELOG). Every module's ``__all__`` must name things that exist, and a
package must not leak public names it does not export.
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

PINNED = {
    "bus": [
        "BrokerError", "BusError", "BusSettings", "ContractError", "ExpandedTopology",
        "LoadedTopology", "PlanConflictError", "PublishError", "PublishNackedError",
        "PublishTimeoutError", "Topology", "TopologyError", "UnroutableError", "load_topology",
        "parse_topology",
    ],
    "producers": [
        "DEFAULT_CONFIRM_TIMEOUT", "DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_WINDOW", "Outgoing",
        "PublishResult", "Publisher", "SyncPublisher",
    ],
    "consumers": [
        "RETRY_COUNT_HEADER", "Backoff", "ConsumerApp", "ConsumerMetrics", "HandlerOptions",
        "IdempotencyStore", "InvalidMessageError", "MemoryIdempotencyStore", "Message",
        "PrometheusMetrics", "RejectMessage", "Runtime",
    ],
}  # fmt: skip


def _modules() -> list[str]:
    names = []
    for package in PINNED:
        names.append(package)
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return names


@pytest.mark.parametrize("package", sorted(PINNED))
def test_each_package_exports_exactly_the_pinned_names(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == PINNED[package]
    # Nothing public is importable from the package without being exported.
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(PINNED[package])


@pytest.mark.parametrize("name", _modules())
def test_every_module_all_names_existing_unique_things(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module lacks: {missing}"
