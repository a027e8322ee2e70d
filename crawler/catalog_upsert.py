"""One page of the listing into the registry: creators, models, tags, versions, files.

Contract of ``apply_models``:

- It first compares each item's ``raw_hash`` with the registry in a read session and opens a
  write transaction only when something differs (and compares again under the write lock:
  another crawler may have won), so an unchanged page writes no row at all. Changed rows get
  ``updated_at`` (and ``last_seen_at``: the time the crawler last saw the row *change*); a row
  marked gone that shows up again has ``gone_at`` cleared.
- File state follows its role (``crawler.catalog_rows.file_roles``). A file whose upstream SHA256
  changes starts over (``pending``, 0 attempts); a verified file, or one whose download is under
  way, keeps its history. While the version is in early access the download choice is
  ``deferred`` (the first crawl after it turns public makes it ``pending``); the files of an
  Archived or TakenDown model are ``unavailable`` (never downloaded) until the model returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import sqlalchemy as sa

from crawler.catalog_rows import file_roles, file_row, model_row, version_row
from crawler.parse import ParsedModel, ParsedVersion
from registry.catalog import UNAVAILABLE_MODES
from registry.db import Database, insert_or_ignore
from registry.models import Creator, File, Model, ModelTag, Tag, Version
from registry.states import FileState

# a file in one of these states is downloaded (again) while it has attempts left
RETRY_STATES = (FileState.PENDING, FileState.FAILED, FileState.QUARANTINED)
_CHUNK = 500


def chunks(items: Sequence, n: int = _CHUNK):
    """``items`` in slices small enough for one ``IN (...)`` list."""
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


def apply_models(
    db: Database,
    batch: list[tuple[ParsedModel, list[ParsedVersion]]],
    now: datetime,
    origin: str | None,
) -> PageResult:
    """Upsert one page; ``origin`` is the API the models came from (stored on each model)."""
    result = PageResult()
    if not batch:
        return result
    with db.read() as s:
        changed = _changed(s, batch)
    if not changed:
        return result
    with db.write() as s:
        # again, under the write lock: another crawler may have won
        changed = _changed(s, changed)
        if changed:
            _write_page(s, changed, now, origin, result)
    return result


def _changed(s, batch):
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
    for chunk in chunks(version_ids):
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


def _write_page(s, batch, now: datetime, origin: str | None, result: PageResult) -> None:
    result.wrote = True
    models = [m for m, _ in batch]
    creator_ids = _creators(s, models)
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
        row = model_row(m, creator_ids.get(m.creator_username), now, origin)
        if old is None:
            inserts.append({**row, "first_seen_at": now})
        else:
            updates.append(row)
        tag_models.append(m)
    result.models_new, result.models_updated = _bulk_upsert(s, Model, inserts, updates)
    _tags(s, tag_models)
    versions = [v for _, vs in batch for v in vs]
    existing_versions = {}
    for chunk in chunks([v.id for v in versions]):
        existing_versions.update(
            {r.id: r for r in s.execute(sa.select(Version.id).where(Version.id.in_(chunk)))}
        )
    v_inserts = [
        {**version_row(v, now), "first_seen_at": now}
        for v in versions
        if v.id not in existing_versions
    ]
    v_updates = [version_row(v, now) for v in versions if v.id in existing_versions]
    result.versions_new, result.versions_updated = _bulk_upsert(s, Version, v_inserts, v_updates)
    modes = {v.id: m.mode for m, vs in batch for v in vs}
    result.files_new += _files(s, versions, now, modes)


def _creators(s, models: list[ParsedModel]) -> dict[str, int]:
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


def _tags(s, models: list[ParsedModel]) -> None:
    if not models:
        return
    names = sorted({t for m in models for t in m.tags})
    ids: dict[str, int] = {}
    if names:
        _insert_ignore(s, Tag.__table__, [dict(name=n) for n in names], ["name"])
        for chunk in chunks(names):
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
    for chunk in chunks(stale):
        s.execute(
            sa.delete(ModelTag).where(sa.tuple_(ModelTag.model_id, ModelTag.tag_id).in_(chunk))
        )
    if new:
        s.execute(ModelTag.__table__.insert(), new)


# what a stored file is compared on: every column ``file_row`` fills, and its download state
_FILE_COLUMNS = (
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
)


def _files(s, versions: list[ParsedVersion], now: datetime, modes: dict[int, str | None]) -> int:
    """Insert and update the files of ``versions``; how many were new."""
    existing = _stored_files(s, [f.civitai_file_id for v in versions for f in v.files])
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
            elif change := _file_change(old, row, state, error):
                updates.append({"id": old.id, **change, "updated_at": now})
    if inserts:
        s.execute(File.__table__.insert(), inserts)
    for row in updates:  # rows differ in their keys: one statement each (rare)
        s.execute(
            sa.update(File)
            .where(File.id == row["id"])
            .values(**{k: v for k, v in row.items() if k != "id"})
        )
    _files_unavailable(s, versions, now, modes)
    return len(inserts)


def _stored_files(s, civitai_file_ids: list[int]) -> dict:
    """``civitai_file_id -> stored row`` (``_FILE_COLUMNS``) of those already in the registry."""
    existing = {}
    for chunk in chunks(civitai_file_ids):
        existing.update(
            {
                r.civitai_file_id: r
                for r in s.execute(sa.select(*_FILE_COLUMNS).where(File.civitai_file_id.in_(chunk)))
            }
        )
    return existing


def _file_change(old, row: dict, state: str, error: str | None) -> dict:
    """The columns of a stored file that change, given its new ``row`` and the state its role
    asks for (``file_roles``)."""
    change = {k: val for k, val in row.items() if getattr(old, k) != val}
    if old.sha256 != row["sha256"]:  # another file behind the same id: start over
        change.update(state=state, error=error, attempts=0, local_path=None, verified_at=None)
    elif old.state == FileState.VERIFIED or (
        state == FileState.PENDING and old.state in RETRY_STATES
    ):
        pass  # its download history stands
    elif old.state != state or old.error != error:
        change.update(state=state, error=error)
    return change


def _files_unavailable(
    s, versions: list[ParsedVersion], now: datetime, modes: dict[int, str | None]
) -> None:
    """An archived model's versions list no files: the files known from before are not
    downloadable either."""
    for mode in UNAVAILABLE_MODES:
        gone = [v.id for v in versions if modes.get(v.id) == mode]
        for chunk in chunks(gone):
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
