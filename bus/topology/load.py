"""topology.yaml -> validated :class:`Topology`, with every problem at ``FILE:LINE:COL``.

Entries are validated one by one, so a bad queue does not hide the errors of the others, and
all problems of a file are reported together in one :class:`~bus.errors.TopologyError`.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

from pydantic import BaseModel, ValidationError

from bus.errors import TopologyError, TopologyIssue
from bus.files import MAX_TOPOLOGY_BYTES, read_bounded
from bus.settings import TopologySettings
from bus.topology.checks import as_finding, check_credentials, check_topology
from bus.topology.expand import ExpandedTopology, expand
from bus.topology.limits import check_limits
from bus.topology.model import (
    LIST_SECTIONS,
    SECTIONS,
    CelerySection,
    Schedule,
    Topology,
    Vhost,
)
from bus.topology.source import Path, SourceMap, parse_yaml

__all__ = [
    "LoadedTopology",
    "TopologySource",
    "expanded_topology",
    "load_topology",
    "parse_topology",
]


@dataclass
class LoadedTopology:
    """A valid topology, its expansion and where each value came from."""

    model: Topology
    expanded: ExpandedTopology
    source: SourceMap

    @property
    def file(self) -> str:
        return self.source.file


def _describe(error: Any) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    if kind in ("int_type", "int_parsing") and isinstance(value, str) and value.strip().isdigit():
        return f"quoted number {value!r}: write {value.strip()} without quotes"
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind not in ("value_error",) and not isinstance(value, dict | list):
        message += f", got {value!r}"
    return message


def _data_path(data: Any, loc: tuple[Any, ...]) -> Path:
    """The part of a pydantic ``loc`` that exists in the data (drops union/validator tags)."""
    path: list[str | int] = []
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            path.append(part)
            node = node[part]
        # Anything else is a union/validator tag or a missing field: report the parent.
    return tuple(path)


class _Loader:
    def __init__(self, data: Any, source: SourceMap) -> None:
        self.data = data
        self.source = source
        self.issues: list[TopologyIssue] = []

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self.issues.append(self.source.issue(path, message, key=key))

    def validate(self, model: type[BaseModel], value: Any, at: Path) -> BaseModel | None:
        """The validated entry, or None after reporting its errors.

        For a mapping entry with errors, the fields at fault are dropped and the rest is
        validated again, so the cross-field checks still see it: all errors in one run.
        """
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            bad_fields = self.report(model, value, at, exc)
        if isinstance(value, dict):
            rest = {k: v for k, v in value.items() if k not in bad_fields}
            if rest != value:
                try:
                    return model.model_validate(rest)
                except ValidationError:
                    return None
        return None

    def report(
        self, model: type[BaseModel], value: Any, at: Path, exc: ValidationError
    ) -> set[Any]:
        """Report each error of one entry; returns the entry's top-level fields at fault."""
        bad_fields: set[Any] = set()
        reported: set[Path] = set()
        for error in exc.errors():
            loc = tuple(error["loc"])
            rel = _data_path(value, loc)
            if rel:
                bad_fields.add(rel[0])
            path = (*at, *rel)
            if error["type"] == "extra_forbidden":
                known = sorted(model.model_fields) if len(rel) == 1 else []
                close = difflib.get_close_matches(str(rel[-1]) if rel else "", known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(path, f"unknown key{hint}", key=True)
            elif error["type"] == "missing":
                self.error(path, f"required field {loc[-1]!r} is missing")
            elif path not in reported:
                reported.add(path)
                self.error(path, _describe(error))
        return bad_fields

    def celery(self, raw: Any) -> CelerySection:
        """The ``celery:`` section, each schedule on its own so one bad entry hides no other."""
        if not isinstance(raw, dict):
            self.error(("celery",), "celery must be a mapping (monitoring, schedules)")
            return CelerySection()
        head = {k: v for k, v in raw.items() if k != "schedules"}
        checked = self.validate(CelerySection, head, ("celery",))
        section = checked if isinstance(checked, CelerySection) else CelerySection()
        raw_schedules = raw.get("schedules")
        if raw_schedules is None:
            return section
        if not isinstance(raw_schedules, dict):
            self.error(("celery", "schedules"), "schedules must be a mapping of name -> schedule")
            return section
        schedules: dict[str, Schedule] = {}
        for name, entry in raw_schedules.items():
            at: Path = ("celery", "schedules", name)
            if isinstance(entry, dict):
                # Checked on the raw keys: a cron value the model rejected still counts as given,
                # so one typo gives one error, not a second "neither every nor cron".
                if "every" in entry and "cron" in entry:
                    self.error(
                        (*at, "cron"), "give exactly one of every / cron, not both", key=True
                    )
                elif "every" not in entry and "cron" not in entry:
                    self.error(at, "give exactly one of every (e.g. 30s) / cron", key=True)
            schedule = self.validate(Schedule, {} if entry is None else entry, at)
            if isinstance(schedule, Schedule):
                schedules[name] = schedule
        return section.model_copy(update={"schedules": schedules})

    def section(self, data: dict[str, Any], name: str, shape: type, expected: str) -> Any:
        """``data[name]`` when it is a ``shape``; None when absent, or wrong (reported)."""
        raw = data.get(name)
        if raw is not None and not isinstance(raw, shape):
            self.error((name,), f"{name} must be {expected}")
            return None
        return raw

    def load(self) -> Topology | None:
        data = self.data
        if not isinstance(data, dict):
            self.error((), "the topology must be a mapping with 'version: 1' at the top")
            return None
        fields = Topology.model_fields
        for key in data:
            if key not in fields:
                close = difflib.get_close_matches(key, sorted(fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error((key,), f"unknown top-level key{hint}", key=True)
        if "version" not in data:
            self.error((), "required field 'version' is missing (write version: 1)")
        elif data["version"] != 1 or isinstance(data["version"], bool):
            self.error(("version",), f"unsupported version {data['version']!r}: expected 1")

        parts: dict[str, Any] = {"version": 1}
        if data.get("vhost") is not None:
            parts["vhost"] = self.validate(Vhost, data["vhost"], ("vhost",))
        for section, model in SECTIONS.items():
            raw = self.section(data, section, dict, "a mapping of name -> definition")
            if raw is not None:
                named = {
                    name: self.validate(model, {} if entry is None else entry, (section, name))
                    for name, entry in raw.items()
                }
                parts[section] = {name: v for name, v in named.items() if v is not None}
        for section, model in LIST_SECTIONS.items():
            raw = self.section(data, section, list, "a list")
            if raw is not None:
                listed = [
                    self.validate(model, entry, (section, index)) for index, entry in enumerate(raw)
                ]
                parts[section] = [v for v in listed if v is not None]
        if data.get("celery") is not None:
            parts["celery"] = self.celery(data["celery"])
        unmanaged = data.get("unmanaged")
        if unmanaged is not None:
            if isinstance(unmanaged, list) and all(isinstance(p, str) for p in unmanaged):
                parts["unmanaged"] = unmanaged
            else:
                self.error(("unmanaged",), "unmanaged must be a list of regular expressions")

        topology = Topology.model_construct(**parts)
        declared_exchanges = (
            set(data.get("exchanges") or {}) if isinstance(data.get("exchanges"), dict) else set()
        )
        declared_queues = (
            set(data.get("queues") or {}) if isinstance(data.get("queues"), dict) else set()
        )
        findings = [
            *check_topology(topology, declared_exchanges, declared_queues),
            *check_limits(topology),
            *map(as_finding, check_credentials(data)),
        ]
        for path, message, at_key in findings:
            self.error(path, message, key=at_key)
        return topology


def parse_topology(text: str, file: str = "topology.yaml") -> LoadedTopology:
    """Validate topology text; raise :class:`TopologyError` with every issue found."""
    data, source, issues = parse_yaml(text, file)
    if data is None and issues:
        raise TopologyError(issues)
    loader = _Loader(data, source)
    topology = loader.load()
    all_issues = sorted(set(issues + loader.issues))
    if all_issues or topology is None:
        raise TopologyError(all_issues)
    return LoadedTopology(topology, expand(topology), source)


def load_topology(path: str | os.PathLike[str]) -> LoadedTopology:
    """Read and validate the topology file at ``path``.

    Callers resolve the default file (:class:`bus.settings.TopologySettings`) at the edge.
    """
    file = FilePath(path)
    raw = read_bounded(file, MAX_TOPOLOGY_BYTES, "topology file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(
            [TopologyIssue(str(file), 1, 1, "", f"the file is not UTF-8 text ({exc.reason})")]
        ) from None
    return parse_topology(text, str(file))


TopologySource = LoadedTopology | ExpandedTopology | str | os.PathLike[str] | None
"""What a library entry point takes as its topology: loaded, expanded, or a file (None: the
default file of :class:`bus.settings.TopologySettings`, ``$BUS_TOPOLOGY`` or
``./topology.yaml``)."""


def expanded_topology(topology: TopologySource) -> ExpandedTopology:
    """The expansion of ``topology`` (a file is read and validated)."""
    if isinstance(topology, ExpandedTopology):
        return topology
    if isinstance(topology, LoadedTopology):
        return topology.expanded
    return load_topology(topology if topology is not None else TopologySettings().topology).expanded
