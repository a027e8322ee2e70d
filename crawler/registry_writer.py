"""The crawler's registry writes (synchronous; ``sync`` calls them from one writer thread).

Contract:

- ``apply_models`` upserts one page: creators, models, tags, versions, files. It first compares
  each item's ``raw_hash`` with the registry in a read session and opens a write transaction only
  when something differs, so an unchanged page writes no row at all. Changed rows get
  ``updated_at`` (and ``last_seen_at``: the time the crawler last saw the row *change*); a row
  marked gone that shows up again has ``gone_at`` cleared.
- File state follows its role: the version's download choice is ``pending`` (until verified,
  failed or quarantined), a pickle-format primary file is ``unsupported``, the rest ``skipped``.
  A file whose upstream SHA256 changes starts over (``pending``, 0 attempts). While the version is
  in early access the download choice is ``deferred`` (never attempted, no attempt counted; the
  first crawl after it turns public makes it ``pending``); the files of an Archived or TakenDown
  model are ``unavailable`` (never downloaded) until the model returns.
- ``record_download`` stores one download outcome; a newly verified file calls the
  ``lora_file_verified`` hook inside the same write transaction (a failing hook rolls the
  verification back, and the next crawl tries again without downloading again).
- ``mark_gone`` sets ``gone_at`` on models/versions; nothing is ever deleted.
- Strings are cut to their column widths (PostgreSQL enforces them).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

import sqlalchemy as sa

from crawler.download import DownloadTask, Outcome
from crawler.parse import ParsedFile, ParsedModel, ParsedVersion, in_early_access
from registry.catalog import UNAVAILABLE_MODES, api_origin
from registry.db import Database, insert_or_ignore
from registry.models import (
    CrawlError,
    CrawlRun,
    Creator,
    File,
    Model,
    ModelTag,
    Tag,
    Version,
    utcnow,
)
from registry.states import FileState

MAX_FILE_ATTEMPTS = 3
RETRY_STATES = (FileState.PENDING, FileState.FAILED, FileState.QUARANTINED)
_CHUNK = 500


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _chunks(items: Sequence, n: int = _CHUNK):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _insert_ignore(session, table: sa.Table, rows: list[dict], keys: list[str]) -> None:
    if not rows:
        return
    session.execute(insert_or_ignore(session.get_bind().dialect.name, table, keys), rows)


def _bulk_upsert(session, table, inserts: list[dict], updates: list[dict]) -> tuple[int, int]:
    """Insert new rows and update existing ones by primary key, in two statements."""
    if inserts:
        session.execute(table.__table__.insert(), inserts)  # Core executemany: no ORM bookkeeping
    if updates:
        session.execute(sa.update(table), updates)
    return len(inserts), len(updates)


@dataclass
class PageResult:
    wrote: bool = False
    models_new: int = 0
    models_updated: int = 0
    versions_new: int = 0
    versions_updated: int = 0
    files_new: int = 0


@dataclass
class ErrorRecord:
    stage: str  # page | model | download | gone
    ref: str | None
    message: str
    status_code: int | None = None


def model_row(
    m: ParsedModel, creator_id: int | None, now: datetime, origin: str | None = None
) -> dict:
    return dict(
        id=m.id,
        name=m.name,
        description=m.description,
        type=m.type,
        nsfw=m.nsfw,
        nsfw_level=m.nsfw_level,
        poi=m.poi,
        minor=m.minor,
        availability=m.availability,
        mode=m.mode,
        allow_no_credit=m.allow_no_credit,
        allow_derivatives=m.allow_derivatives,
        allow_different_license=m.allow_different_license,
        allow_commercial_use=m.allow_commercial_use,
        download_count=m.download_count,
        thumbs_up_count=m.thumbs_up_count,
        creator_id=creator_id,
        source="civitai",
        origin=origin,
        raw=m.raw,
        raw_hash=m.raw_hash,
        last_seen_at=now,
        updated_at=now,
        gone_at=None,
    )


def version_row(v: ParsedVersion, now: datetime) -> dict:
    return dict(
        id=v.id,
        model_id=v.model_id,
        name=v.name,
        description=v.description,
        base_model=v.base_model,
        base_model_type=v.base_model_type,
        trained_words=v.trained_words,
        published_at=v.published_at,
        availability=v.availability,
        nsfw_level=v.nsfw_level,
        download_count=v.download_count,
        download_url=v.download_url,
        air=v.air,
        status=v.status,
        usage_control=v.usage_control,
        early_access_ends_at=v.early_access_ends_at,
        civitai_created_at=v.created_at,
        civitai_updated_at=v.civitai_updated_at,
        source="civitai",
        previews=v.previews,
        raw=v.raw,
        raw_hash=v.raw_hash,
        last_seen_at=now,
        updated_at=now,
        gone_at=None,
    )


def early_access_note(ends_at: datetime | None) -> str:
    until = f" until {ends_at.isoformat()}" if ends_at is not None else ""
    return f"early access{until}: not downloaded until it is public"


def file_roles(
    v: ParsedVersion, mode: str | None = None, now: datetime | None = None
) -> dict[int, tuple[str, str | None]]:
    """``civitai_file_id -> (state, error)`` for a version's files as the payload describes them.

    The file to download is ``pending``, or ``deferred`` while the version is in early access (no
    attempt is made or counted), or ``unavailable`` when the model is Archived or TakenDown.
    """
    chosen, why_not = v.download_choice()
    primary = v.primary_file()
    roles: dict[int, tuple[str, str | None]] = {}
    for f in v.files:
        if chosen is not None and f.civitai_file_id == chosen.civitai_file_id:
            if mode in UNAVAILABLE_MODES:
                roles[f.civitai_file_id] = (
                    "unavailable",
                    f"the model is {mode} on Civitai: never downloaded",
                )
            elif v.early_access(now or utcnow()):
                roles[f.civitai_file_id] = ("deferred", early_access_note(v.early_access_ends_at))
            else:
                roles[f.civitai_file_id] = (
                    "pending",
                    None if f.sha256 else "the API publishes no SHA256 for it yet",
                )
        elif (
            chosen is None and primary is not None and f.civitai_file_id == primary.civitai_file_id
        ):
            roles[f.civitai_file_id] = ("unsupported", why_not)
        else:
            roles[f.civitai_file_id] = ("skipped", None)
    return roles


def file_row(f: ParsedFile, version_id: int, is_primary: bool) -> dict:
    return dict(
        civitai_file_id=f.civitai_file_id,
        version_id=version_id,
        name=f.name,
        size_bytes=f.size_bytes,
        type=f.type,
        format=f.format,
        fp=f.fp,
        primary=is_primary,
        sha256=f.sha256,
        autov2=f.autov2,
        blake3=f.blake3,
        crc32=f.crc32,
        pickle_scan=f.pickle_scan,
        virus_scan=f.virus_scan,
        autov1=f.autov1,
        autov3=f.autov3,
        size_type=f.size,
        pickle_scan_message=f.pickle_scan_message,
        virus_scan_message=f.virus_scan_message,
        scanned_at=f.scanned_at,
    )


class RegistryStore:
    def __init__(self, db: Database, app=None):
        self.db = db
        self.app = app
        self.origin = api_origin(app.settings.civitai_base_url) if app is not None else None

    # -------------------------------------------------------------- crawl runs

    def start_run(self, params: dict) -> int:
        """Record a new run (with this host and pid); runs of dead crawlers on this host become
        ``interrupted``."""
        host, pid = socket.gethostname(), os.getpid()
        with self.db.write() as s:
            for run in s.execute(sa.select(CrawlRun).where(CrawlRun.status == "running")).scalars():
                p = run.params or {}
                if p.get("host") == host and isinstance(p.get("pid"), int) and not _alive(p["pid"]):
                    run.status = "interrupted"
            run = CrawlRun(
                started_at=utcnow(), status="running", params={**params, "host": host, "pid": pid}
            )
            s.add(run)
            s.flush()
            return run.id

    def update_run(self, run_id: int, values: dict) -> None:
        with self.db.write() as s:
            s.execute(sa.update(CrawlRun).where(CrawlRun.id == run_id).values(**values))

    def add_errors(self, run_id: int, errors: Iterable[ErrorRecord]) -> None:
        rows = [
            dict(
                run_id=run_id,
                at=utcnow(),
                stage=e.stage[:16],
                ref=(e.ref or "")[:255] or None,
                status_code=e.status_code,
                message=e.message[:4000],
            )
            for e in errors
        ]
        if rows:
            with self.db.write() as s:
                s.execute(sa.insert(CrawlError), rows)

    # -------------------------------------------------------------- catalog

    def apply_models(
        self, batch: list[tuple[ParsedModel, list[ParsedVersion]]], now: datetime
    ) -> PageResult:
        result = PageResult()
        if not batch:
            return result
        with self.db.read() as s:
            changed = self._changed(s, batch)
        if not changed:
            return result
        with self.db.write() as s:
            changed = self._changed(
                s, changed
            )  # again, under the write lock: another crawler may have won
            if changed:
                self._write(s, changed, now, result)
        return result

    def _changed(self, s, batch):
        model_ids = [m.id for m, _ in batch]
        version_ids = [v.id for _, vs in batch for v in vs]
        models = {
            r.id: r
            for r in s.execute(
                sa.select(Model.id, Model.raw_hash, Model.gone_at, Model.mode).where(
                    Model.id.in_(model_ids)
                )
            )
        }
        versions = {}
        for chunk in _chunks(version_ids):
            versions.update(
                {
                    r.id: r
                    for r in s.execute(
                        sa.select(
                            Version.id, Version.raw_hash, Version.gone_at, Version.model_id
                        ).where(Version.id.in_(chunk))
                    )
                }
            )
        out = []
        for m, vs in batch:
            row = models.get(m.id)
            model_changed = row is None or row.raw_hash != m.raw_hash or row.gone_at is not None
            if row is not None and row.mode != m.mode:
                new_vs = list(vs)  # archived, taken down or back: every file's role changes
            else:
                new_vs = [
                    v
                    for v in vs
                    if (r := versions.get(v.id)) is None
                    or r.raw_hash != v.raw_hash
                    or r.gone_at is not None
                    or r.model_id != v.model_id
                ]
            if model_changed or new_vs:
                out.append((m, new_vs))
        return out

    def _write(self, s, batch, now: datetime, result: PageResult) -> None:
        result.wrote = True
        models = [m for m, _ in batch]
        creator_ids = self._creators(s, models)
        existing_models = {
            r.id: r
            for r in s.execute(
                sa.select(Model.id, Model.raw_hash, Model.gone_at).where(
                    Model.id.in_([m.id for m in models])
                )
            )
        }
        inserts, updates, tag_models = [], [], []
        for m in models:
            old = existing_models.get(m.id)
            if old is not None and old.raw_hash == m.raw_hash and old.gone_at is None:
                continue  # only its versions changed
            row = model_row(m, creator_ids.get(m.creator_username), now, self.origin)
            if old is None:
                inserts.append({**row, "first_seen_at": now})
            else:
                updates.append(row)
            tag_models.append(m)
        result.models_new, result.models_updated = _bulk_upsert(s, Model, inserts, updates)
        self._tags(s, tag_models)
        versions = [v for _, vs in batch for v in vs]
        existing_versions = {}
        for chunk in _chunks([v.id for v in versions]):
            existing_versions.update(
                {r.id: r for r in s.execute(sa.select(Version.id).where(Version.id.in_(chunk)))}
            )
        v_inserts = [
            {**version_row(v, now), "first_seen_at": now}
            for v in versions
            if v.id not in existing_versions
        ]
        v_updates = [version_row(v, now) for v in versions if v.id in existing_versions]
        result.versions_new, result.versions_updated = _bulk_upsert(
            s, Version, v_inserts, v_updates
        )
        modes = {v.id: m.mode for m, vs in batch for v in vs}
        result.files_new += self._files(s, versions, now, modes)

    def _creators(self, s, models: list[ParsedModel]) -> dict[str, int]:
        wanted = {m.creator_username: m.creator_image for m in models if m.creator_username}
        if not wanted:
            return {}
        _insert_ignore(
            s,
            Creator.__table__,
            [dict(username=u, image_url=i) for u, i in wanted.items()],
            ["username"],
        )
        rows = s.execute(
            sa.select(Creator.id, Creator.username, Creator.image_url).where(
                Creator.username.in_(list(wanted))
            )
        ).all()
        stale = [
            dict(id=r.id, image_url=wanted[r.username])
            for r in rows
            if r.image_url != wanted[r.username]
        ]
        if stale:
            s.execute(sa.update(Creator), stale)
        return {r.username: r.id for r in rows}

    def _tags(self, s, models: list[ParsedModel]) -> None:
        if not models:
            return
        names = sorted({t for m in models for t in m.tags})
        ids: dict[str, int] = {}
        if names:
            _insert_ignore(s, Tag.__table__, [dict(name=n) for n in names], ["name"])
            for chunk in _chunks(names):
                ids.update(
                    {
                        r.name: r.id
                        for r in s.execute(sa.select(Tag.id, Tag.name).where(Tag.name.in_(chunk)))
                    }
                )
        model_ids = [m.id for m in models]
        current: dict[int, set[int]] = {}
        for r in s.execute(
            sa.select(ModelTag.model_id, ModelTag.tag_id).where(ModelTag.model_id.in_(model_ids))
        ):
            current.setdefault(r.model_id, set()).add(r.tag_id)
        stale, new = [], []
        for m in models:
            want = {ids[t] for t in m.tags if t in ids}
            have = current.get(m.id, set())
            stale += [(m.id, t) for t in sorted(have - want)]
            new += [dict(model_id=m.id, tag_id=t) for t in sorted(want - have)]
        for chunk in _chunks(stale):
            s.execute(
                sa.delete(ModelTag).where(sa.tuple_(ModelTag.model_id, ModelTag.tag_id).in_(chunk))
            )
        if new:
            s.execute(ModelTag.__table__.insert(), new)

    def _files(
        self, s, versions: list[ParsedVersion], now: datetime, modes: dict[int, str | None]
    ) -> int:
        parsed = [(v, f) for v in versions for f in v.files]
        existing = {}
        for chunk in _chunks([f.civitai_file_id for _, f in parsed]):
            existing.update(
                {
                    r.civitai_file_id: r
                    for r in s.execute(
                        sa.select(
                            File.id,
                            File.civitai_file_id,
                            File.version_id,
                            File.name,
                            File.size_bytes,
                            File.type,
                            File.format,
                            File.fp,
                            File.primary,
                            File.sha256,
                            File.autov2,
                            File.blake3,
                            File.crc32,
                            File.pickle_scan,
                            File.virus_scan,
                            File.autov1,
                            File.autov3,
                            File.size_type,
                            File.pickle_scan_message,
                            File.virus_scan_message,
                            File.scanned_at,
                            File.state,
                            File.error,
                        ).where(File.civitai_file_id.in_(chunk))
                    )
                }
            )
        inserts, updates = [], []
        for v in versions:
            roles = file_roles(v, modes.get(v.id), now)
            primary = v.primary_file()
            for f in v.files:
                row = file_row(
                    f, v.id, primary is not None and f.civitai_file_id == primary.civitai_file_id
                )
                state, error = roles[f.civitai_file_id]
                old = existing.get(f.civitai_file_id)
                if old is None:
                    inserts.append(
                        {**row, "state": state, "error": error, "attempts": 0, "updated_at": now}
                    )
                    continue
                change = {k: val for k, val in row.items() if getattr(old, k) != val}
                if old.sha256 != f.sha256:  # another file behind the same id: start over
                    change.update(
                        state=state, error=error, attempts=0, local_path=None, verified_at=None
                    )
                elif old.state == FileState.VERIFIED or (
                    state == FileState.PENDING and old.state in RETRY_STATES
                ):
                    pass  # its download history stands
                elif old.state != state or old.error != error:
                    change.update(state=state, error=error)
                if change:
                    updates.append({"id": old.id, **change, "updated_at": now})
        if inserts:
            s.execute(File.__table__.insert(), inserts)
        for row in updates:  # rows differ in their keys: one statement each (rare)
            s.execute(
                sa.update(File)
                .where(File.id == row["id"])
                .values(**{k: v for k, v in row.items() if k != "id"})
            )
        # an archived model's versions list no files: the files known from before are not downloadable either
        for mode in UNAVAILABLE_MODES:
            gone = [v.id for v in versions if modes.get(v.id) == mode]
            for chunk in _chunks(gone):
                s.execute(
                    sa.update(File)
                    .where(
                        File.version_id.in_(chunk),
                        File.state.in_(("pending", "failed", "deferred")),
                    )
                    .values(
                        state=FileState.UNAVAILABLE,
                        error=f"the model is {mode} on Civitai: never downloaded",
                        updated_at=now,
                    )
                )
        return len(inserts)

    # -------------------------------------------------------------- downloads

    def download_tasks(self, version_ids: Sequence[int]) -> list[DownloadTask]:
        """Files to download now: never those of Archived/TakenDown models; a ``deferred`` (early
        access) file only once its end date has passed and the listing no longer says EarlyAccess."""
        tasks = []
        now = utcnow()
        with self.db.read() as s:
            for chunk in _chunks(list(version_ids)):
                rows = s.execute(
                    sa.select(
                        File.id,
                        File.version_id,
                        File.civitai_file_id,
                        File.sha256,
                        File.size_bytes,
                        File.state,
                        Version.availability,
                        Version.early_access_ends_at,
                    )
                    .join(Version, Version.id == File.version_id)
                    .outerjoin(Model, Model.id == Version.model_id)
                    .where(
                        File.version_id.in_(chunk),
                        File.state.in_(RETRY_STATES + (FileState.DEFERRED,)),
                        File.sha256.is_not(None),
                        File.attempts < MAX_FILE_ATTEMPTS,
                        Version.gone_at.is_(None),
                        sa.or_(Model.mode.is_(None), Model.mode.not_in(UNAVAILABLE_MODES)),
                    )
                    .order_by(File.id)
                )
                tasks += [
                    DownloadTask(
                        file_id=r.id,
                        version_id=r.version_id,
                        civitai_file_id=r.civitai_file_id,
                        sha256=r.sha256,
                        size_bytes=r.size_bytes,
                    )
                    for r in rows
                    if r.state != FileState.DEFERRED
                    or not in_early_access(r.availability, r.early_access_ends_at, now)
                ]
        return tasks

    def record_download(self, task: DownloadTask, outcome: Outcome) -> bool:
        """Store an outcome; True when the file became verified now (the hook was called)."""
        now = utcnow()
        with self.db.write() as s:
            if outcome.state == FileState.VERIFIED:
                n = s.execute(
                    sa.update(File)
                    .where(File.id == task.file_id, File.state != FileState.VERIFIED)
                    .values(
                        state=FileState.VERIFIED,
                        local_path=outcome.local_path,
                        verified_at=now,
                        error=None,
                        attempts=File.attempts + 1,
                        updated_at=now,
                    )
                ).rowcount
                if n == 1:
                    from registry.plugins import pm

                    pm.hook.lora_file_verified(
                        app=self.app, session=s, version_id=task.version_id, file_id=task.file_id
                    )
                return n == 1
            values = dict(error=(outcome.error or outcome.state)[:4000], updated_at=now)
            if outcome.counts_as_attempt:
                values.update(
                    state=outcome.state, attempts=File.attempts + 1, local_path=outcome.local_path
                )
            s.execute(
                sa.update(File)
                .where(File.id == task.file_id, File.state != FileState.VERIFIED)
                .values(**values)
            )
            return False

    # -------------------------------------------------------------- disappearance

    def alive_ids(self) -> tuple[set[int], dict[int, int]]:
        """Ids of civitai models and ``{version id: model id}`` not marked gone."""
        with self.db.read() as s:
            models = set(
                s.execute(
                    sa.select(Model.id).where(Model.gone_at.is_(None), Model.source == "civitai")
                ).scalars()
            )
            versions = {
                r.id: r.model_id
                for r in s.execute(
                    sa.select(Version.id, Version.model_id).where(
                        Version.gone_at.is_(None), Version.source == "civitai"
                    )
                )
            }
        return models, versions

    def mark_gone(
        self, model_ids: Iterable[int], version_ids: Iterable[int], now: datetime
    ) -> tuple[int, int]:
        model_ids, version_ids = sorted(set(model_ids)), sorted(set(version_ids))
        n_models = n_versions = 0
        if not model_ids and not version_ids:
            return 0, 0
        with self.db.write() as s:
            for chunk in _chunks(model_ids):
                n_models += s.execute(
                    sa.update(Model)
                    .where(Model.id.in_(chunk), Model.gone_at.is_(None))
                    .values(gone_at=now, updated_at=now)
                ).rowcount
                n_versions += s.execute(
                    sa.update(Version)
                    .where(Version.model_id.in_(chunk), Version.gone_at.is_(None))
                    .values(gone_at=now, updated_at=now)
                ).rowcount
            for chunk in _chunks(version_ids):
                n_versions += s.execute(
                    sa.update(Version)
                    .where(Version.id.in_(chunk), Version.gone_at.is_(None))
                    .values(gone_at=now, updated_at=now)
                ).rowcount
        return n_models, n_versions
