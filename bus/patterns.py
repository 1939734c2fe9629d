"""Name patterns the bus evaluates on its own CPU: ``unmanaged:`` and ``--allow-idle``.

Python's ``re`` backtracks: ``^(a+)+$`` against a live queue named ``a`` x 30 + ``!`` takes
tens of seconds, doubling per character, and the names come from the broker, where anyone with
configure permission can create one. These patterns run on RE2 (``google-re2``), whose time is
linear in the name. A pattern must compile under both engines, so what is accepted is Python's
syntax less backreferences, look-around and possessive forms, and means the same in both with
two exceptions: ``\\d``, ``\\w``, ``\\s`` and ``\\b`` match ASCII only (as in RabbitMQ's own policy
patterns), and ``$`` matches only at the very end (not before a final newline). Any other
pattern is refused at validation (``bus validate``) with its line and column.

Policy patterns are not compiled here: the broker evaluates those.
"""

from __future__ import annotations

import re
import warnings
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
    """The compiled pattern; raises ``ValueError`` with the reason when it is refused.

    A pattern must compile under Python's ``re`` too (compiled only, never matched): the two
    engines then read it the same way, except for what the module docstring lists. Python's
    warnings count as refusals: ``[[:alpha:]]`` is a POSIX class to RE2 and a plain set
    (with a FutureWarning) to ``re``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            re.compile(pattern)
        except (re.error, Warning) as exc:
            raise ValueError(f"invalid regular expression ({exc})") from None
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(
            f"invalid or unsupported regular expression ({reason}); patterns run on RE2: "
            "no backreferences, look-around or possessive forms"
        ) from None
    return NamePattern(pattern, compiled)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused, or None when it compiles."""
    try:
        compile_name_pattern(pattern)
    except ValueError as exc:
        return str(exc)
    return None
