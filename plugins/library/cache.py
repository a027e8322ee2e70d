"""The hash cache of ``carlos-reg scan`` (the *Hash cache* part of the contract in
``plugins.library.scan``): one ``local_file`` row per path; a path whose size and mtime (ns) are
unchanged is trusted without reading a byte, any other file is hashed and screened; a path that
vanished under a scanned folder is marked ``missing``; a changed file keeps ``previous_sha256``.
Nothing is deleted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from plugins.library.files import Found, hash_file, screen
from registry.models import LocalFile, utcnow
from signer.validate import MAX_FILE_BYTES


def refresh_cache(
    db, roots: list[Path], found: list[Found], result, count: Callable[[int], None]
) -> list[int]:
    """The ``local_file`` ids of the files found (hashed only where needed); fills ``result``'s
    skipped, hashed_files and missing."""
    now = utcnow()
    known = _known(db)
    ids = []
    for f in found:
        old = known.get(f.path)
        if old is not None and old[1] == f.size and old[2] == f.mtime_ns:
            _still_present(db, old, now)
            ids.append(old[0])
            continue
        digest = _hash(f, result, count)
        if digest is not None:
            ids.append(_store(db, f, old, digest, now))
    result.missing = _mark_missing(db, roots, found, known, now)
    return ids


def _known(db) -> dict[str, tuple]:
    """Every cached path: (id, size, mtime_ns, status, sha256)."""
    with db.read() as s:
        return {
            r.path: (r.id, r.size_bytes, r.mtime_ns, r.status, r.sha256)
            for r in s.execute(
                sa.select(
                    LocalFile.id,
                    LocalFile.path,
                    LocalFile.size_bytes,
                    LocalFile.mtime_ns,
                    LocalFile.status,
                    LocalFile.sha256,
                )
            )
        }


def _still_present(db, old: tuple, now) -> None:
    """An unchanged file: trusted as cached; one that was missing is present again."""
    if old[3] != "present":
        with db.write() as s:
            s.execute(
                sa.update(LocalFile)
                .where(LocalFile.id == old[0])
                .values(status="present", missing_since=None, last_seen_at=now)
            )


def _hash(f: Found, result, count: Callable[[int], None]) -> str | None:
    """The file's SHA-256, or None when it is too large for a LoRA or cannot be read (skipped)."""
    if f.size > MAX_FILE_BYTES:
        result.skipped.append(
            {
                "path": f.path,
                "reason": f"{f.size / 2**30:.1f} GiB, over the "
                f"{MAX_FILE_BYTES / 2**30:.0f} GiB limit for a LoRA: not hashed",
            }
        )
        return None
    try:
        digest = hash_file(f.path, count)
    except OSError as exc:
        result.skipped.append(
            {
                "path": f.path,
                "reason": f"cannot read ({exc.strerror or type(exc).__name__})",
            }
        )
        return None
    result.hashed_files += 1
    return digest


def _store(db, f: Found, old: tuple | None, digest: str, now) -> int:
    """A new or changed file's row, screened by the signer's validator; its id."""
    reason = screen(f.path)
    values = dict(
        size_bytes=f.size,
        mtime_ns=f.mtime_ns,
        sha256=digest,
        autov2=digest[:10].upper(),
        status="present",
        signable=reason is None,
        reason=reason,
        hashed_at=now,
        last_seen_at=now,
        missing_since=None,
    )
    with db.write() as s:
        if old is None:
            row = LocalFile(path=f.path, first_seen_at=now, match="pending", **values)
            s.add(row)
            s.flush()
            return row.id
        if old[4] != digest:
            values.update(previous_sha256=old[4], changed_at=now, match="pending", version_id=None)
        s.execute(sa.update(LocalFile).where(LocalFile.id == old[0]).values(**values))
        return old[0]


def _mark_missing(db, roots: list[Path], found: list[Found], known: dict, now) -> list[str]:
    """Cached paths under the scanned folders that were not found, gone now or earlier."""
    present = {f.path for f in found}
    prefixes = [os.path.abspath(r) for r in roots]
    gone = [
        (i, p)
        for p, (i, *_rest) in known.items()
        if p not in present
        and any(p == pre or p.startswith(pre.rstrip(os.sep) + os.sep) for pre in prefixes)
    ]
    newly = [i for i, p in gone if known[p][3] == "present"]
    if newly:
        with db.write() as s:
            s.execute(
                sa.update(LocalFile)
                .where(LocalFile.id.in_(newly))
                .values(status="missing", missing_since=now)
            )
    return sorted(p for _, p in gone)
