"""Files written whole or not at all: a reader never sees half of one, a crash leaves no debris.

The data go to a fresh, unpredictable temporary name in the target's folder (created
exclusively, so a symlink planted there is never followed), then an atomic rename puts them in
place. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, durable: bool = False) -> Iterator[BinaryIO]:
    """A binary file handle whose content appears at ``path`` only if the block ends without
    error. ``durable`` also flushes it to the disk before the rename (artifacts that a database
    row will point to). The file is an ordinary one (0644), not mkstemp's private 0600."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_file(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_file(path) as fh:
        fh.write(data)
    return Path(path)
