"""The crawler's registry writes (synchronous; ``sync`` calls them from one writer thread).

Contract:

- ``apply_models`` upserts one page: creators, models, tags, versions, files; only rows that
  changed are written (``crawler.catalog_upsert`` has its contract).
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

from crawler.catalog_upsert import RETRY_STATES, PageResult, apply_models, chunks
from crawler.download import DownloadTask, Outcome
from crawler.parse import ParsedModel, ParsedVersion, in_early_access
from registry.catalog import UNAVAILABLE_MODES, api_origin
from registry.db import Database
from registry.models import CrawlError, CrawlRun, File, Model, Version, utcnow
from registry.states import FileState

MAX_FILE_ATTEMPTS = 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ErrorRecord:
    stage: str  # page | model | download | gone
    ref: str | None
    message: str
    status_code: int | None = None


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
        return apply_models(self.db, batch, now, self.origin)

    # -------------------------------------------------------------- downloads

    def download_tasks(self, version_ids: Sequence[int]) -> list[DownloadTask]:
        """Files to download now: never those of Archived/TakenDown models; a ``deferred`` (early
        access) file only once its end date has passed and the listing no longer says EarlyAccess."""
        tasks = []
        now = utcnow()
        with self.db.read() as s:
            for chunk in chunks(list(version_ids)):
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
        if not model_ids and not version_ids:
            return 0, 0
        with self.db.write() as s:
            n_models = _stamp_gone(s, Model, Model.id, model_ids, now)
            n_versions = _stamp_gone(s, Version, Version.model_id, model_ids, now)
            n_versions += _stamp_gone(s, Version, Version.id, version_ids, now)
        return n_models, n_versions


def _stamp_gone(s, table, key, ids: list[int], now: datetime) -> int:
    """Set ``gone_at`` on the rows of ``table`` whose ``key`` is in ``ids`` and that are not gone
    yet; returns how many rows changed."""
    changed = 0
    for chunk in chunks(ids):
        changed += s.execute(
            sa.update(table)
            .where(key.in_(chunk), table.gone_at.is_(None))
            .values(gone_at=now, updated_at=now)
        ).rowcount
    return changed
