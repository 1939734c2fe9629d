"""``with thing:`` for test fixtures that start and stop (a fault proxy, a local cluster).

One ``__enter__``/``__exit__`` pair instead of one per fixture class: entering starts the
thing, leaving stops it whatever happened inside.
"""

from __future__ import annotations

from typing import Self

__all__ = ["StartedInWith"]


class StartedInWith:
    """Base of a class with ``start() -> Self`` and ``stop()``; adds the ``with`` protocol."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
