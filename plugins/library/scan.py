"""``carlos-reg scan DIR…``: your own LoRA folder (ComfyUI, Forge, A1111 or any folder), used in place.

Contract:
- Walk: every ``.safetensors`` (and pickle-suffixed file, listed as unsignable) under the folders,
  symlinks followed; a directory already visited (same device and inode) is not entered again, so
  a symlink loop ends; a broken link is listed as skipped. Paths are kept as found (absolute, not
  resolved) and are only ever shown or ``stat``-ed/opened as paths the user's own folder gave.
- Hash cache: the ``local_file`` row of a path whose size and mtime (ns) are unchanged is trusted,
  so a rescan reads no file bytes; otherwise the file is hashed (SHA-256, streamed; AutoV2 = its
  first 10 hex digits) and screened with the signer's validator (``inspect_lora_file``), whose
  reason is stored for unsignable files. A path that vanished is marked ``missing``; a file whose
  content changed keeps ``previous_sha256``. Nothing is deleted.
- Identity, in order: a registry file with that SHA-256 (the version it belongs to); else what
  Civitai's ``/api/v1/model-versions/by-hash/{sha256}`` answered (asked once per hash through the
  crawler's client, in batches that are committed as they finish, so an interrupted scan resumes;
  the model is then fetched and stored exactly as a crawl stores it); else a local LoRA
  (``local:N``, as ``sign PATH`` makes). ``offline`` asks nothing.
- A signable file's registry file becomes ``verified`` in place: the artifact store gets a hardlink
  (same filesystem) or, with ``copy``, a copy; otherwise only the ``local_file`` reference exists.
- ``sign``: every signable, present file not signed under the profile (by version, or by the
  file's SHA-256: signature reuse) is queued.

The walk and the hashing are ``files``, the hash cache ``cache``, the Civitai lookup ``civitai``;
identity, in-place use, the report and the queueing are here.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from plugins.library.cache import refresh_cache
from plugins.library.files import scan_suffixes, walk
from registry.models import File, HashLookup, LocalFile, Signature, Version, utcnow
from registry.states import FileState


@dataclass
class ScanResult:
    files: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    hashed_files: int = 0
    bytes_hashed: int = 0
    lookups: dict = field(
        default_factory=lambda: {
            "asked": 0,
            "found": 0,
            "not_found": 0,
            "errors": 0,
            "models_fetched": 0,
        }
    )
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        out = {"registry": 0, "civitai": 0, "local": 0, "unsignable": 0, "unresolved": 0}
        for f in self.files:
            out[f["category"]] += 1
        out["missing"] = len(self.missing)
        return out


# ---------------------------------------------------------------- the scan


class Scanner:
    def __init__(
        self,
        app,
        *,
        offline: bool = False,
        refresh: bool = False,
        copy: bool = False,
        sign: bool = False,
        profile: str | None = None,
        client_kwargs: dict | None = None,
        say: Callable[[str], None] = lambda m: None,
    ):
        self.app, self.db = app, app.db
        self.offline, self.refresh, self.copy, self.sign = offline, refresh, copy, sign
        self.profile_name = profile
        self.client_kwargs = client_kwargs or {}
        self.say = say
        self.result = ScanResult()

    def run(self, roots: list[Path]) -> ScanResult:
        res = self.result
        found = walk(roots, scan_suffixes(), res.skipped)
        rows = refresh_cache(self.db, roots, found, res, self._count)
        self._identify(rows)
        self._describe(rows)
        return res

    # -- hashing (``refresh_cache`` reports the bytes it reads here)

    def _count(self, n: int) -> None:
        self.result.bytes_hashed += n

    # -- identity

    def _identify(self, ids: list[int]) -> None:
        with self.db.read() as s:
            rows = s.execute(sa.select(LocalFile).where(LocalFile.id.in_(ids))).scalars().all()
            todo = {r.id: (r.sha256, r.version_id, r.match) for r in rows}
        unresolved = self._match_registry(todo)
        if not self.offline:
            self._ask_civitai(sorted(set(unresolved.values())))
        self._settle(unresolved)
        # in-place files of signable rows: the registry file becomes verified (a link, or nothing)
        with self.db.write() as s:
            for row in s.execute(
                sa.select(LocalFile).where(
                    LocalFile.id.in_(ids),
                    LocalFile.signable.is_(True),
                    LocalFile.version_id.is_not(None),
                )
            ).scalars():
                self._use_in_place(s, row)

    def _match_registry(self, todo: dict[int, tuple]) -> dict[int, str]:
        """1. The registry already has the file (an earlier link stands while it is still that
        version's file). The rows left to ask Civitai about, with their SHA-256."""
        unresolved: dict[int, str] = {}
        with self.db.write() as s:
            for rid, (sha, vid, match) in todo.items():
                if vid is not None and _has_file(s, vid, sha):
                    if match != "local":
                        continue
                    unresolved[rid] = sha  # local only so far: Civitai may know it
                    continue
                hit = _registry_version(s, sha)
                if hit is not None and hit[1] != "local":
                    _link(s, rid, hit[0], "registry")
                    continue
                if hit is not None and vid != hit[0]:
                    # known only as a local LoRA (``sign PATH``, an offline scan)
                    _link(s, rid, hit[0], "local")
                # 2. Civitai is asked once per hash, even about local-only files
                unresolved[rid] = sha
        return unresolved

    def _ask_civitai(self, hashes: list[str]) -> None:
        """The hashes never asked about (all of them with ``refresh``)."""
        from plugins.library.civitai import HashLookups

        asked: set[str] = set()
        if not self.refresh:
            with self.db.read() as s:
                for i in range(0, len(hashes), 500):
                    asked.update(
                        s.execute(
                            sa.select(HashLookup.sha256).where(
                                HashLookup.sha256.in_(hashes[i : i + 500])
                            )
                        ).scalars()
                    )
        wanted = [h for h in hashes if h not in asked]
        if wanted:
            lookups = HashLookups(self.app, self.result, self.client_kwargs, self.say)
            asyncio.run(lookups.run(wanted))

    def _settle(self, unresolved: dict[int, str]) -> None:
        """What Civitai answered, else a local LoRA (offline, or Civitai does not know the file)."""
        with self.db.write() as s:
            for rid, sha in unresolved.items():
                cached = s.get(HashLookup, sha)
                if (
                    cached is not None
                    and cached.status == "found"
                    and cached.version_id is not None
                    and s.get(Version, cached.version_id) is not None
                ):
                    _link(s, rid, cached.version_id, "civitai")
                    continue
                row = s.get(LocalFile, rid)
                if row.match == "local" and row.version_id is not None:
                    continue
                if self.offline or cached is not None:
                    self._register_local(s, row)
                # else: the lookup failed (an error was reported): it stays unresolved, asked again next scan

    def _register_local(self, s, row: LocalFile) -> None:
        from signer.local_loras import new_local_version

        hit = _registry_version(
            s, row.sha256
        )  # the same content under another name, registered just now
        if hit is not None:
            row.version_id, row.match = hit[0], "local" if hit[1] == "local" else "registry"
            return
        p = Path(row.path)
        if row.signable:
            state, fmt = FileState.VERIFIED, "SafeTensor"
        else:
            state = FileState.UNSUPPORTED
            fmt = "PickleTensor" if p.suffix.lower() != ".safetensors" else "SafeTensor"
        vid, _ = new_local_version(
            s,
            name=p.stem,
            file_name=p.name,
            size=row.size_bytes,
            digest=row.sha256,
            state=state,
            error=None if row.signable else row.reason,
            fmt=fmt,
        )
        row.version_id, row.match = vid, "local"

    def _use_in_place(self, s, row: LocalFile) -> None:
        from signer.local_loras import place_file

        f = (
            s.execute(
                sa.select(File)
                .where(File.version_id == row.version_id, File.sha256 == row.sha256)
                .order_by(File.primary.desc(), File.id)
            )
            .scalars()
            .first()
        )
        if f is None or (f.state == FileState.VERIFIED and f.local_path is not None):
            return
        try:
            st = os.stat(row.path)
        except OSError:
            return
        if st.st_size != row.size_bytes or st.st_mtime_ns != row.mtime_ns:
            return  # changed since it was hashed: the next scan sees it
        rel = place_file(self.app.settings.artifacts, Path(row.path), row.sha256, copy=self.copy)
        f.state, f.error, f.verified_at, f.updated_at = FileState.VERIFIED, None, utcnow(), utcnow()
        if rel is not None:
            f.local_path = rel

    # -- the report (and queueing)

    def _describe(self, ids: list[int]) -> None:
        res = self.result
        profile_id = None
        if self.sign:
            from signer.profiles import load_profile, register

            profile = load_profile(
                self.profile_name or self.app.settings.default_profile, self.app.settings
            )
            with self.db.write() as s:
                profile_id = register(s, profile).id
        with self.db.write() as s:
            rows = (
                s.execute(
                    sa.select(LocalFile).where(LocalFile.id.in_(ids)).order_by(LocalFile.path)
                )
                .scalars()
                .all()
            )
            for r in rows:
                res.files.append(self._entry(s, r, profile_id))

    def _entry(self, s, r: LocalFile, profile_id: int | None) -> dict:
        category = (
            "unsignable"
            if not r.signable
            else {"registry": "registry", "civitai": "civitai", "local": "local"}.get(
                r.match, "unresolved"
            )
        )
        v = s.get(Version, r.version_id) if r.version_id is not None else None
        entry = {
            "path": r.path,
            "sha256": r.sha256,
            "autov2": r.autov2,
            "size_bytes": r.size_bytes,
            "category": category,
            "match": r.match,
            "signable": r.signable,
            "reason": r.reason,
            "version_id": r.version_id,
            "model_id": v.model_id if v is not None else None,
            "name": v.name if v is not None else None,
            "base_model": v.base_model if v is not None else None,
            "ref": (f"local:{-v.id}" if v.id < 0 else f"civitai:{v.model_id}@{v.id}")
            if v is not None
            else None,
            "changed": r.previous_sha256 is not None
            and r.changed_at is not None
            and r.hashed_at == r.changed_at,
            "previous_sha256": r.previous_sha256,
            "signing": None,
        }
        if profile_id is not None and r.signable and v is not None:
            entry["signing"] = self._queue(s, r, profile_id)
        return entry

    def _queue(self, s, r: LocalFile, profile_id: int) -> str:
        from registry.queue import JobQueue
        from signer.queueing import enqueue_lora, reuse_signature, verified_file

        own = s.execute(
            sa.select(Signature.source).where(
                Signature.version_id == r.version_id, Signature.profile_id == profile_id
            )
        ).first()
        if own is not None:
            return "reused" if own.source == "reused" else "signed"
        if reuse_signature(s, profile_id, r.version_id) is not None:
            return "reused"
        if verified_file(s, r.version_id) is None:
            return (
                "not queued: the file is on another filesystem than the artifact store (use --copy)"
            )
        return (
            "queued"
            if enqueue_lora(s, JobQueue(self.db), profile_id, r.version_id)
            else "already queued"
        )


def _link(s, rid: int, version_id: int, match: str) -> None:
    s.execute(
        sa.update(LocalFile).where(LocalFile.id == rid).values(version_id=version_id, match=match)
    )


def _has_file(s, version_id: int, sha: str) -> bool:
    return (
        s.execute(
            sa.select(File.id).where(File.version_id == version_id, File.sha256 == sha)
        ).first()
        is not None
    )


def _registry_version(s, sha: str) -> tuple[int, str] | None:
    """The version a registry file with this SHA-256 belongs to: a Civitai one first, the oldest."""
    row = s.execute(
        sa.select(Version.id, Version.source)
        .join(File, File.version_id == Version.id)
        .where(File.sha256 == sha)
        .order_by((Version.source == "local").asc(), sa.func.abs(Version.id))
    ).first()
    return (row.id, row.source) if row is not None else None
