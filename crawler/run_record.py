"""The crawl run's record: registry calls on the one writer thread, problems (stored, logged
and shown), the run row's counts, and the run row's last write.

``RunRecord`` is mixed into ``crawler.sync.Crawler`` and works on its state: ``stats``,
``reporter``, ``writer`` (``crawler.registry_writer.RegistryStore``), ``client`` once it is open,
and the writer thread (``_executor``), its retry policy (``_db_retry``) and the problems not yet
stored (``_errors``), which ``Crawler.__init__`` sets up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from crawler.crawl_types import disk_full
from crawler.registry_writer import ErrorRecord
from registry.models import utcnow
from registry.retry import retry_call

log = logging.getLogger("crawler.sync")
MAX_ERROR_SAMPLES = 50


class RunRecord:
    """Writing the run down: through the writer thread, into ``stats`` and the run row."""

    async def _write(self, fn: Callable, *args):
        """Run a registry call on the one writer thread, riding out a database restart.

        Every store call is one transaction that is safe to rerun (upserts compare payload hashes,
        downloads are recorded by file id), so a lost connection is retried with backoff for up to
        ``CARLOS_REG_DB_RETRY_SECONDS``; then ``DatabaseUnavailable`` fails the crawl.
        """
        what = f"crawl: {getattr(fn, '__name__', 'write')}"
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: retry_call(lambda: fn(*args), what=what, policy=self._db_retry)
        )

    def _error(self, stage: str, ref: str | None, message: str, status: int | None = None) -> None:
        client = getattr(self, "client", None)
        # every problem is stored, printed and logged: never with the token in it
        if client is not None:
            message = client.redact(message)
        self.stats.errors += 1
        record = ErrorRecord(stage=stage, ref=ref, message=message, status_code=status)
        self._errors.append(record)
        if len(self.stats.error_samples) < MAX_ERROR_SAMPLES:
            self.stats.error_samples.append(
                {"stage": stage, "item": ref, "status": status, "message": message}
            )
        log.log(
            logging.INFO if self.reporter.shows_problems else logging.WARNING,
            "%s %s: %s",
            stage,
            ref or "",
            message,
        )
        self.reporter.problem(f"{stage} {ref or ''}: {message}".strip())

    async def _flush_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            await self._write(self.writer.add_errors, self.stats.run_id, errors)

    def _run_values(self) -> dict:
        s = self.stats
        return dict(
            status=s.status,
            cursor=s.cursor,
            pages=s.pages,
            requests=s.requests,
            models_seen=s.models_seen,
            models_written=s.models_new + s.models_updated,
            versions_new=s.versions_new,
            versions_gone=s.versions_gone,
            files_verified=s.files_verified,
            files_failed=s.files_failed + s.files_quarantined,
            bytes_downloaded=s.bytes_downloaded,
            error_count=s.errors,
        )

    async def _finish(self) -> None:
        try:
            await self._flush_errors()
            await self._write(
                self.writer.update_run,
                self.stats.run_id,
                {**self._run_values(), "finished_at": utcnow()},
            )
        except Exception as exc:
            if not disk_full(exc):
                raise
            # nothing more fits; the run row stays "running" and the next crawl marks it interrupted
            log.warning(
                "crawl run %s could not be recorded: the registry's disk is full", self.stats.run_id
            )
        finally:
            self._executor.shutdown(wait=True)

    def _sync_counters(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            self.stats.requests, self.stats.retries = client.requests, client.retries
            self.stats.retry_reasons = dict(client.retry_reasons)
        self.reporter.refresh(self.stats)
