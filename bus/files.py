"""Reading a file the user named, bounded before a byte is read.

``Path.read_bytes`` on ``/dev/zero`` or a FIFO never returns (or returns gigabytes): the size
is checked on the open descriptor first, only regular files are read, and never more than
``limit + 1`` bytes, so a file that grows while it is read is refused too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bus.errors import UsageError

__all__ = ["MAX_TOPOLOGY_BYTES", "read_bounded"]

# A topology of ~15,000 queues with a binding each is 1 MiB and validates in ~6 s here;
# the shipped one is 3 KB. Larger files are refused before they are read.
MAX_TOPOLOGY_BYTES = 1024 * 1024


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``), else one-line UsageError.

    ``what`` names the file in the message ("topology file", "body file").
    """
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise block before fstat.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a directory: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{what} is a directory: {path}")
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(
                f"{what} {path} is not a regular file (a device, FIFO or socket): refused"
            )
        if info.st_size > limit:
            raise UsageError(_too_large(what, path, limit))
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # it grew after fstat
        raise UsageError(_too_large(what, path, limit))
    return data


def _too_large(what: str, path: Path, limit: int) -> str:
    return f"{what} {path} is larger than the limit of {limit} bytes: refused, nothing read"
