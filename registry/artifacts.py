"""A content-addressed artifact store under the data dir (LoRA files, ensembles, caches).

Paths are derived from content hashes and kinds, never from names that came from outside.
Writes go to a temp file in the destination folder and are renamed into place, so a crash
never leaves a partial file at a final path. Paths stored in the database are relative to
the store root, so a data dir can move.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO, Iterator

from registry.files import atomic_file

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KIND = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_SUFFIX = re.compile(r"^(\.[a-z0-9]{1,16}){0,2}$")


class ArtifactStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def relative_path(self, kind: str, digest: str, suffix: str = "") -> str:
        """``kind/ab/cd/abcd….suffix`` for a lowercase SHA-256 hex digest."""
        digest = digest.lower()
        if not _KIND.match(kind):
            raise ValueError(f"bad artifact kind {kind!r}")
        if not _HEX64.match(digest):
            raise ValueError("artifact digest must be 64 lowercase hex characters")
        if not _SUFFIX.match(suffix):
            raise ValueError(f"bad artifact suffix {suffix!r}")
        return f"{kind}/{digest[:2]}/{digest[2:4]}/{digest}{suffix}"

    def path(self, relative: str) -> Path:
        """The absolute path of a stored relative path; refuses anything that escapes the root."""
        full = (self.root / relative).resolve()
        root = self.root.resolve()
        if root != full and root not in full.parents:
            raise ValueError("artifact path escapes the store")
        return full

    def exists(self, relative: str) -> bool:
        return self.path(relative).is_file()

    @contextlib.contextmanager
    def atomic_writer(self, relative: str) -> Iterator[BinaryIO]:
        """Write a file that appears at ``relative`` only when the block finishes without error."""
        with atomic_file(self.path(relative), durable=True) as fh:
            yield fh

    def put_bytes(self, kind: str, data: bytes, suffix: str = "") -> str:
        """Store bytes under their SHA-256; returns the relative path (idempotent)."""
        relative = self.relative_path(kind, hashlib.sha256(data).hexdigest(), suffix)
        if not self.exists(relative):
            with self.atomic_writer(relative) as fh:
                fh.write(data)
        return relative

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize
