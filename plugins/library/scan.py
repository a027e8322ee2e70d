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
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from registry.models import File, HashLookup, LocalFile, Signature, Version, utcnow
from registry.states import FileState
from signer.validate import MAX_FILE_BYTES, PICKLE_SUFFIXES

LOOKUP_BATCH = 50
CHUNK = 1 << 20


def scan_suffixes() -> set[str]:
    return {".safetensors"} | set(PICKLE_SUFFIXES)


@dataclass
class Found:
    path: str
    size: int
    mtime_ns: int


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


# ---------------------------------------------------------------- walking and hashing


def walk(roots: list[Path], suffixes: set[str], skipped: list[dict]) -> list[Found]:
    """Files under ``roots`` (or the roots themselves), symlinks followed, each directory once."""
    found: dict[str, Found] = {}
    seen_dirs: set[tuple[int, int]] = set()

    def consider(path: str, st: os.stat_result) -> None:
        if Path(path).suffix.lower() in suffixes and stat.S_ISREG(st.st_mode):
            found.setdefault(path, Found(path, st.st_size, st.st_mtime_ns))

    for root in roots:
        top = os.path.abspath(root)
        try:
            st = os.stat(top)
        except OSError as exc:
            skipped.append(
                {"path": top, "reason": f"cannot read ({exc.strerror or type(exc).__name__})"}
            )
            continue
        if not stat.S_ISDIR(st.st_mode):
            consider(top, st)
            continue
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                dst = os.stat(d)
            except OSError:
                continue
            key = (dst.st_dev, dst.st_ino)
            if key in seen_dirs:
                continue  # a symlink loop, or the same folder reached twice
            seen_dirs.add(key)
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                skipped.append(
                    {"path": d, "reason": f"cannot list ({exc.strerror or type(exc).__name__})"}
                )
                continue
            subdirs = []
            for e in entries:
                try:
                    est = os.stat(e.path)  # follows symlinks
                except OSError:
                    if e.is_symlink() and Path(e.name).suffix.lower() in suffixes:
                        skipped.append({"path": e.path, "reason": "broken symlink"})
                    continue
                if stat.S_ISDIR(est.st_mode):
                    subdirs.append(e.path)
                else:
                    consider(e.path, est)
            stack.extend(reversed(subdirs))
    return sorted(found.values(), key=lambda f: f.path)


def hash_file(path: str, counter: Callable[[int], None]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            counter(len(chunk))
    return h.hexdigest()


def screen(path: str) -> str | None:
    """Why the signer would refuse the file, or None (the signer's own validator decides).

    Structure only (format, keys, SD 1.x, LoHa, DoRA, truncation, …): the tensor values (NaN, alphas)
    need torch and are checked when the file is signed."""
    from signer.errors import LoraRejected
    from signer.validate import inspect_lora_file

    try:
        inspect_lora_file(path, check_values=False)
    except LoraRejected as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read ({exc.strerror or type(exc).__name__})"
    return None


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
        rows = self._refresh_cache(roots, found)
        self._identify(rows)
        self._describe(rows)
        return res

    # -- the hash cache

    def _refresh_cache(self, roots: list[Path], found: list[Found]) -> list[int]:
        res = self.result
        now = utcnow()
        with self.db.read() as s:
            known = {
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
        ids = []
        for f in found:
            old = known.get(f.path)
            if old is not None and old[1] == f.size and old[2] == f.mtime_ns:
                if old[3] != "present":
                    with self.db.write() as s:
                        s.execute(
                            sa.update(LocalFile)
                            .where(LocalFile.id == old[0])
                            .values(status="present", missing_since=None, last_seen_at=now)
                        )
                ids.append(old[0])
                continue
            if f.size > MAX_FILE_BYTES:
                res.skipped.append(
                    {
                        "path": f.path,
                        "reason": f"{f.size / 2**30:.1f} GiB, over the "
                        f"{MAX_FILE_BYTES / 2**30:.0f} GiB limit for a LoRA: not hashed",
                    }
                )
                continue
            try:
                digest = hash_file(f.path, self._count)
            except OSError as exc:
                res.skipped.append(
                    {
                        "path": f.path,
                        "reason": f"cannot read ({exc.strerror or type(exc).__name__})",
                    }
                )
                continue
            res.hashed_files += 1
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
            with self.db.write() as s:
                if old is None:
                    row = LocalFile(path=f.path, first_seen_at=now, match="pending", **values)
                    s.add(row)
                    s.flush()
                    ids.append(row.id)
                else:
                    if old[4] != digest:
                        values.update(
                            previous_sha256=old[4], changed_at=now, match="pending", version_id=None
                        )
                    s.execute(sa.update(LocalFile).where(LocalFile.id == old[0]).values(**values))
                    ids.append(old[0])
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
            with self.db.write() as s:
                s.execute(
                    sa.update(LocalFile)
                    .where(LocalFile.id.in_(newly))
                    .values(status="missing", missing_since=now)
                )
        res.missing = sorted(p for _, p in gone)  # under the scanned folders, gone now or earlier
        return ids

    def _count(self, n: int) -> None:
        self.result.bytes_hashed += n

    # -- identity

    def _identify(self, ids: list[int]) -> None:
        with self.db.read() as s:
            rows = s.execute(sa.select(LocalFile).where(LocalFile.id.in_(ids))).scalars().all()
            todo = {r.id: (r.sha256, r.version_id, r.match) for r in rows}
        # 1. the registry already has the file (an earlier link stands while it is still that version's file)
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
                    s.execute(
                        sa.update(LocalFile)
                        .where(LocalFile.id == rid)
                        .values(version_id=hit[0], match="registry")
                    )
                    continue
                if (
                    hit is not None and vid != hit[0]
                ):  # known only as a local LoRA (``sign PATH``, an offline scan)
                    s.execute(
                        sa.update(LocalFile)
                        .where(LocalFile.id == rid)
                        .values(version_id=hit[0], match="local")
                    )
                unresolved[rid] = (
                    sha  # 2. Civitai is asked once per hash, even about local-only files
                )
        hashes = sorted(set(unresolved.values()))
        if not self.offline:
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
                asyncio.run(self._lookup(wanted))
        with self.db.write() as s:
            for rid, sha in unresolved.items():
                cached = s.get(HashLookup, sha)
                if (
                    cached is not None
                    and cached.status == "found"
                    and cached.version_id is not None
                    and s.get(Version, cached.version_id) is not None
                ):
                    s.execute(
                        sa.update(LocalFile)
                        .where(LocalFile.id == rid)
                        .values(version_id=cached.version_id, match="civitai")
                    )
                    continue
                row = s.get(LocalFile, rid)
                if row.match == "local" and row.version_id is not None:
                    continue
                if self.offline or cached is not None:
                    self._register_local(s, row)
                # else: the lookup failed (an error was reported): it stays unresolved, asked again next scan
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
            vid, _ = new_local_version(
                s,
                name=p.stem,
                file_name=p.name,
                size=row.size_bytes,
                digest=row.sha256,
                state=FileState.VERIFIED,
                fmt="SafeTensor",
            )
        else:
            vid, _ = new_local_version(
                s,
                name=p.stem,
                file_name=p.name,
                size=row.size_bytes,
                digest=row.sha256,
                state=FileState.UNSUPPORTED,
                error=row.reason,
                fmt="PickleTensor" if p.suffix.lower() != ".safetensors" else "SafeTensor",
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

    async def _lookup(self, hashes: list[str]) -> None:
        from crawler.client import CivitaiClient
        from crawler.http_errors import CivitaiError

        res = self.result
        settings = self.app.settings
        async with CivitaiClient(
            settings.civitai_base_url, settings.civitai_api_key, **self.client_kwargs
        ) as client:
            fetched_models: dict[int, dict | None] = {}
            for i in range(0, len(hashes), LOOKUP_BATCH):
                batch = hashes[i : i + LOOKUP_BATCH]
                self.say(
                    f"asking Civitai about {len(batch)} file hashes ({i + len(batch)}/{len(hashes)})"
                )

                async def one(h: str):
                    try:
                        return (
                            h,
                            await client.get_json(f"/api/v1/model-versions/by-hash/{h.upper()}"),
                            None,
                        )
                    except CivitaiError as exc:
                        return h, None, exc

                answers = await asyncio.gather(*(one(h) for h in batch))
                if all(problem is not None and problem.status is None for _, _, problem in answers):
                    res.lookups["asked"] += len(answers)
                    res.lookups["errors"] += len(answers)
                    res.errors.append(
                        f"Civitai unreachable ({answers[0][2]}): stopped asking; the next scan "
                        f"asks again about the {len(hashes) - i} hashes left"
                    )
                    break
                docs = []
                for h, doc, problem in answers:
                    res.lookups["asked"] += 1
                    if problem is not None:
                        if problem.status == 404:
                            res.lookups["not_found"] += 1
                            docs.append((h, None))
                        else:
                            res.lookups["errors"] += 1
                            res.errors.append(f"by-hash {h[:12]}…: {problem}")
                        continue
                    docs.append((h, doc))
                for _h, doc in docs:
                    mid = _model_id(doc)
                    if mid is not None and mid not in fetched_models:
                        try:
                            fetched_models[mid] = await client.get_json(f"/api/v1/models/{mid}")
                            res.lookups["models_fetched"] += 1
                        except CivitaiError as exc:
                            fetched_models[mid] = None
                            if exc.status != 404:
                                res.errors.append(f"model {mid}: {exc}")
                self._store_batch(docs, fetched_models)

    def _store_batch(
        self, docs: list[tuple[str, dict | None]], models: dict[int, dict | None]
    ) -> None:
        """One batch's answers, committed together (an interrupted scan keeps what finished)."""
        from crawler.parse import ApiSchemaError, parse_model, parse_version
        from crawler.registry_writer import RegistryStore

        res = self.result
        now = utcnow()
        store = RegistryStore(self.db, self.app)
        outcomes: list[tuple[str, str, int | None]] = []
        for h, doc in docs:
            if doc is None:
                outcomes.append((h, "not_found", None))
                continue
            try:
                mid = _model_id(doc)
                vid = parse_version(doc, mid or 0)[0].id
                item = models.get(mid) if mid is not None else None
                if not isinstance(item, dict) or not any(
                    isinstance(v, dict) and v.get("id") == vid
                    for v in item.get("modelVersions") or []
                ):
                    summary = doc.get("model") if isinstance(doc.get("model"), dict) else {}
                    item = {**summary, "id": mid, "modelVersions": [doc]}
                pm = parse_model(item)
                keep = [v for v in pm.versions if v.is_sdxl or v.id == vid]
                store.apply_models([(pm, keep)], now)
            except (ApiSchemaError, ValueError, TypeError) as exc:
                res.errors.append(f"by-hash {h[:12]}…: unusable answer ({exc})")
                res.lookups["errors"] += 1
                continue
            res.lookups["found"] += 1
            outcomes.append((h, "found", vid))
        if outcomes:
            with self.db.write() as s:
                for h, status, vid in outcomes:
                    row = s.get(HashLookup, h)
                    if row is None:
                        s.add(HashLookup(sha256=h, status=status, version_id=vid, looked_up_at=now))
                    else:
                        row.status, row.version_id, row.looked_up_at = status, vid, now

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


def _model_id(doc) -> int | None:
    mid = doc.get("modelId") if isinstance(doc, dict) else None
    return mid if type(mid) is int and mid > 0 else None
