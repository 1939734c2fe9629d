"""Objects named as ``package.module:attribute`` (the form of topology.yaml's ``model:`` and
of the CLI's ``--app``): one resolver, each caller turning a failure into its own error."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_object"]


def import_object(path: str, default_attribute: str = "") -> Any:
    """The object at ``module:attribute`` (a dotted attribute walks nested objects).

    Without ``:attribute`` the ``default_attribute`` is used; with neither, the module itself.
    Raises :class:`ImportError` for the module and :class:`AttributeError` for the attribute.
    """
    module_name, _, attribute = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in filter(None, (attribute or default_attribute).split(".")):
        target = getattr(target, part)
    return target
