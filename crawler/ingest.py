"""The crawl after a page is parsed: storing it, queueing its downloads, the download workers.

``IngestSteps`` is mixed into ``crawler.sync.Crawler`` and works on its state: ``stats``,
``options``, ``writer`` (the registry writes), ``client``, and its ``_write`` (one writer thread),
``_error``, ``_flush_errors``, ``_run_values`` and ``_sync_counters``. The contract (one short
transaction per page, a failing page retried item by item, one bad file never ends the crawl) is
in ``crawler.sync``'s docstring.
"""

from __future__ import annotations

import asyncio
import logging

from crawler.catalog_upsert import PageResult
from crawler.crawl_types import CrawlFailed, disk_full
from crawler.download import DownloadTask, Outcome, download
from registry.errors import DatabaseError, first_line
from registry.models import utcnow
from registry.states import FileState

log = logging.getLogger("crawler.sync")


class IngestSteps:
    """Pages into the registry, files into the download queue, outcomes into the registry."""

    async def _consume(self, pages: asyncio.Queue, downloads: asyncio.Queue) -> None:
        while (batch := await pages.get()) is not None:
            await self._ingest(batch, downloads)

    async def _store_page(self, batch) -> list[PageResult]:
        """Write a page; if that fails, item by item, so one unstorable item costs only itself.

        When every item fails the cause is the registry, not the data: the error propagates.
        """
        try:
            return [await self._write(self.writer.apply_models, batch, utcnow())]
        except DatabaseError:
            raise
        except Exception as page_error:
            if disk_full(page_error):  # item by item would fail the same way, thousands of times
                self._error(
                    "page",
                    f"page {self.stats.pages}",
                    "the registry's disk is full; the crawl stops (free space, then crawl again)",
                )
                raise CrawlFailed(
                    "the registry's disk is full; the crawl stopped (free space, then crawl again)"
                ) from None
            if len(batch) == 1:
                raise
            results, failed = [], []
            for item in batch:
                try:
                    results.append(await self._write(self.writer.apply_models, [item], utcnow()))
                except DatabaseError:
                    raise
                except Exception as exc:
                    failed.append((item[0].id, exc))
            if len(failed) == len(batch):
                raise page_error
            for model_id, exc in failed:
                first = first_line(exc, limit=300)
                self._error(
                    "model",
                    f"model {model_id}",
                    f"could not be stored: {type(exc).__name__}: {first}",
                )
            return results

    async def _ingest(self, batch, downloads: asyncio.Queue) -> None:
        if batch:
            s = self.stats
            results = await self._store_page(batch)
            for result in results:
                s.models_new += result.models_new
                s.models_updated += result.models_updated
                s.versions_new += result.versions_new
                s.versions_updated += result.versions_updated
            if any(r.wrote for r in results) or self._errors:
                await self._flush_errors()
                await self._write(self.writer.update_run, s.run_id, self._run_values())
            if self.options.download:
                for task in await self._write(
                    self.writer.download_tasks, [v.id for _, vs in batch for v in vs]
                ):
                    if task.file_id not in self._queued_files:
                        self._queued_files.add(task.file_id)
                        s.files_queued += 1
                        downloads.put_nowait(task)
        self._sync_counters()

    # -------------------------------------------------------------- downloads

    def _on_bytes(self, n: int) -> None:
        self.stats.bytes_downloaded += n
        self.reporter.refresh(self.stats)

    async def _download_worker(self, downloads: asyncio.Queue) -> None:
        artifacts = self.app.settings.artifacts
        while True:
            task = await downloads.get()
            try:
                outcome = await download(
                    self.client, artifacts, task, self.options.limits, self._on_bytes
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or an odd OS error: this file fails, the crawl goes on
                log.debug("download of file %s crashed", task.file_id, exc_info=True)
                outcome = Outcome(
                    "failed", error=f"unexpected {type(exc).__name__} while downloading"
                )
            try:
                await self._record(task, outcome)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._error(
                    "download",
                    _file_ref(task),
                    f"could not record the outcome: {type(exc).__name__}: {first_line(exc)}",
                )
            finally:
                downloads.task_done()

    async def _record(self, task: DownloadTask, outcome: Outcome) -> None:
        if outcome.state == "busy":
            return
        newly = await self._write(self.writer.record_download, task, outcome)
        s = self.stats
        if outcome.state == FileState.VERIFIED:
            s.files_verified += int(newly)
        elif outcome.state == FileState.QUARANTINED:
            s.files_quarantined += 1
        elif outcome.state == FileState.DEFERRED:
            s.files_deferred += 1
        else:
            s.files_failed += 1
        if outcome.state != FileState.VERIFIED:
            self._error(
                "download", _file_ref(task), f"{outcome.state}: {outcome.error}", outcome.status
            )
        self._sync_counters()


def _file_ref(task: DownloadTask) -> str:
    return f"version {task.version_id} file {task.civitai_file_id or task.file_id}"
