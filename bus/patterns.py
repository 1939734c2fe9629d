"""Name patterns the bus evaluates on its own CPU: ``unmanaged:`` and ``--allow-idle``.

Python's ``re`` backtracks: ``^(a+)+$`` against a live queue named ``a`` x 30 + ``!`` takes
tens of seconds, doubling per character, and the names come from the broker, where anyone with
configure permission can create one. These patterns run on RE2 (``google-re2``), whose time is
linear in the name. RE2 is Python's syntax less backreferences and look-around; like
RabbitMQ's own policy patterns, ``\\d``, ``\\w``, ``\\s`` and ``\\b`` match ASCII only. A pattern
RE2 cannot compile is refused at validation (``bus validate``) with its line and column.

Policy patterns are not compiled here: the broker evaluates those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2

__all__ = ["NamePattern", "compile_name_pattern", "pattern_problem"]

# RE2 refuses a program above this memory instead of growing: a bound on hostile patterns too.
_MAX_MEMORY = 8 << 20


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern on stderr itself
    options.max_mem = _MAX_MEMORY
    return options


@dataclass(frozen=True, slots=True)
class NamePattern:
    """A compiled pattern; :meth:`search` is ``re.search`` semantics, in linear time."""

    pattern: str
    _compiled: Any

    def search(self, name: str) -> bool:
        return self._compiled.search(name) is not None


def compile_name_pattern(pattern: str) -> NamePattern:
    """The compiled pattern; raises ``ValueError`` with RE2's reason when it is refused."""
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(
            f"invalid or unsupported regular expression ({reason}); patterns run on RE2: "
            "no backreferences or look-around"
        ) from None
    return NamePattern(pattern, compiled)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused, or None when it compiles."""
    try:
        compile_name_pattern(pattern)
    except ValueError as exc:
        return str(exc)
    return None
