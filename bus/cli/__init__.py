"""The ``bus`` command line: one module per command group (see :mod:`bus.cli.app`).

The top layer of ``bus``: with :mod:`bus.demo` the only part of it that imports
``producers`` and ``consumers``. Settings are read here, once per command, and passed down.
"""

from bus.cli.app import cli, main, run

__all__ = ["cli", "main", "run"]
