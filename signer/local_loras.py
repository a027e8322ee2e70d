"""Local LoRA files as registry entries (``carlos-reg sign FILE``, the library scan).

Contract:
- ``register_local_files`` turns local files into registry entries: negative version ids,
  ``source='local'``, the file copied into the artifact store by SHA-256 (one version per
  distinct file content); pickle files are recorded as unsupported and never copied or opened.
  A file registered before is found by its SHA-256; new trigger words are recorded on it and
  mark it for signing again.
- ``place_file`` gives a file its place in the artifact store (a hardlink where it can), so
  ``check_stored_file`` re-verifies its SHA-256 before it is signed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from registry.artifacts import ArtifactStore
from registry.models import File, Version, utcnow
from registry.queries import next_local_version_id
from registry.states import FileState
from signer.errors import SignerError
from signer.validate import PICKLE_SUFFIXES

LORA_SUFFIXES = {".safetensors"} | PICKLE_SUFFIXES


@dataclass
class LocalEntry:
    path: Path
    version_id: int
    file_id: int
    sha256: str
    state: str  # verified | unsupported
    reason: str | None = None
    triggers_changed: bool = (
        False  # an existing local version got other trigger words: sign it again
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def collect_paths(args: list[Path]) -> tuple[list[Path], list[Path]]:
    """LoRA-like files named or inside the named folders (not recursive); and the others skipped."""
    files, skipped = [], []
    for arg in args:
        entries = sorted(p for p in arg.iterdir() if p.is_file()) if arg.is_dir() else [arg]
        for p in entries:
            (files if p.suffix.lower() in LORA_SUFFIXES else skipped).append(p)
    return files, skipped


def new_local_version(
    session,
    *,
    name: str,
    file_name: str,
    size: int,
    digest: str,
    state: str,
    error: str | None = None,
    local_path: str | None = None,
    fmt: str | None = None,
    trigger_words: list[str] | None = None,
) -> tuple[int, File]:
    """A new local LoRA version (the next negative id) with its one file; names are display text only."""
    vid = next_local_version_id(session)
    now = utcnow()
    session.add(
        Version(
            id=vid,
            name=name[:200],
            source="local",
            trained_words=list(trigger_words or []),
            first_seen_at=now,
            updated_at=now,
        )
    )
    session.flush()
    f = File(
        version_id=vid,
        name=file_name[:255],
        size_bytes=size,
        primary=True,
        sha256=digest,
        updated_at=now,
        state=state,
        error=error,
        format=fmt,
        local_path=local_path,
        verified_at=now if state == FileState.VERIFIED else None,
    )
    session.add(f)
    session.flush()
    return vid, f


def place_file(
    artifacts: ArtifactStore, path: Path, digest: str, *, copy: bool = True
) -> str | None:
    """The file's place in the artifact store (``lora/…/<sha256>.safetensors``), made if missing: a
    hardlink when the store is on the same filesystem, else a copy when ``copy``, else None.
    The worker re-verifies the SHA-256 before signing, so a linked file edited in place is refused."""
    rel = artifacts.relative_path("lora", digest, ".safetensors")
    if artifacts.exists(rel):
        return rel
    final = artifacts.path(rel)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-link-{os.getpid()}-{digest[:16]}"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(path, tmp, follow_symlinks=True)
        os.replace(tmp, final)
        return rel
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if not copy:
        return None
    with path.open("rb") as src, artifacts.atomic_writer(rel) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return rel


def check_stored_file(artifacts, rel: str, sha: str | None, version_id: int) -> None:
    """Before signing: the file is in the artifact store and still has the SHA-256 the registry
    knows (``SignerError`` otherwise)."""
    if not artifacts.exists(rel):
        raise SignerError(
            f"the verified file of version {version_id} is missing from the artifact store"
        )
    if (
        sha and sha256_file(artifacts.path(rel)) != sha
    ):  # a scanned file is a hardlink: it can be edited
        raise SignerError(
            f"the file of version {version_id} changed since it was hashed (its SHA-256 is "
            "no longer the registry's): scan its folder again"
        )


def _container_problem(path: Path) -> str | None:
    """Why a local file is not a well-formed safetensors container (the crawler's own check), or None."""
    from crawler import stfile
    from signer.validate import MAX_FILE_BYTES

    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return f"file is {size / 2**30:.1f} GiB, over the {MAX_FILE_BYTES / 2**30:.1f} GiB limit for a LoRA"
    try:
        stfile.read_header(path)
    except stfile.InvalidSafetensors as exc:
        return f"not a valid safetensors file: {exc}"
    return None


def register_local_files(
    session, artifacts: ArtifactStore, paths: list[Path], *, trigger_words: list[str] | None = None
) -> list[LocalEntry]:
    out = []
    for path in paths:
        digest = sha256_file(path)
        pickled = path.suffix.lower() in PICKLE_SUFFIXES
        found = (
            session.execute(
                sa.select(File)
                .join(Version, Version.id == File.version_id)
                .where(File.sha256 == digest, Version.source == "local")
            )
            .scalars()
            .first()
        )
        if found is not None:
            version = session.get(Version, found.version_id)
            changed = trigger_words is not None and list(trigger_words) != list(
                version.trained_words or []
            )
            if changed:
                version.trained_words = list(trigger_words)
            if (
                found.state == FileState.VERIFIED and found.local_path is None
            ):  # a scanned file used in place until now
                found.local_path = place_file(artifacts, path, digest)
            out.append(
                LocalEntry(
                    path, found.version_id, found.id, digest, found.state, found.error, changed
                )
            )
            continue
        problem = None if pickled else _container_problem(path)
        kind: dict = {"state": FileState.UNSUPPORTED, "error": problem}
        if pickled:
            kind.update(
                fmt="PickleTensor",
                error=(
                    f"pickle format ({path.suffix.lower()}): never unpickled (it can run code); only .safetensors "
                    "is signed"
                ),
            )
        elif not problem:  # checked before a byte is copied: the store holds only well-formed files
            rel = artifacts.relative_path("lora", digest, ".safetensors")
            if not artifacts.exists(rel):
                with path.open("rb") as src, artifacts.atomic_writer(rel) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            kind = {"state": FileState.VERIFIED, "fmt": "SafeTensor", "local_path": rel}
        vid, f = new_local_version(
            session,
            name=path.stem,
            file_name=path.name,
            size=path.stat().st_size,
            digest=digest,
            trigger_words=trigger_words,
            **kind,
        )
        out.append(LocalEntry(path, vid, f.id, digest, f.state, f.error))
    return out
