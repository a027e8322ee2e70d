"""The crawl: list SDXL LoRAs, upsert them into the registry, download and verify their files.

Contract of ``crawl(app, options)`` / ``run_crawl``:

- Listing: ``GET /api/v1/models`` with repeated ``types`` (LORA, LoCon, DoRA) and ``baseModels``
  (default: every SDXL-architecture base model), ``limit=100``, ``nsfw=true``, ``archived=true``
  (archived models are kept, marked and never downloaded), ``sort=Oldest``
  (keyset order: a model that changes mid-crawl moves *later*, so it is seen again rather than
  skipped), following ``metadata.nextCursor`` until it is absent. Items are de-duplicated by id
  (an item seen again with different content is taken again). Anything that is not an
  SDXL-architecture LoRA is dropped even when the server returns it. A cursor that comes back a
  second time ends the listing (it would loop) and is recorded; so do ``max_stale_pages`` pages in
  a row without a model not listed before (an endless cursor), and a cursor that carries the token.
- Writes are funnelled through one writer thread, one short transaction per page, and only for
  rows that changed: a second crawl of an unchanged catalog writes no catalog row and downloads
  no byte. A page that cannot be stored is retried item by item, so an unstorable item costs only
  itself (recorded); when every item fails the registry is at fault and the crawl fails. A crawl
  run row records params, counts, the last cursor and errors (``crawl_error``).
- Downloads (unless ``download=False``) run concurrently (``concurrency`` workers) as pages
  land; see ``crawler.download``. Each outcome is recorded; one bad file never ends the crawl.
- Disappearance: only a ``full`` pass that listed to the end, over the default (unfiltered) base
  models, without ``max_models`` and without a failed page may mark anything gone, and only after
  ``/api/v1/models/{id}`` confirms it (404/410, or the model no longer has the version / is no
  longer an SDXL LoRA). A model the listing merely skipped is refreshed from that answer instead.
- Status: ``ok`` (listed to the end), ``partial`` (the listing stopped early: a page failed after
  its retries, a repeated or endless cursor, or ``max_models``; or the run reached ``deadline``), ``failed`` (not even the first page could
  be read: ``CrawlFailed`` is raised after the run is recorded; or the registry failed),
  ``interrupted`` (cancelled, or killed: the next crawl on the same host marks a run whose
  process is gone).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from crawler.client import HTTP_RETRY, CivitaiClient, check_base_url
from crawler.download import DownloadLimits, DownloadTask, Outcome, download
from crawler.http_errors import CivitaiError, safe_url
from crawler.parse import (
    LORA_TYPES,
    SDXL_BASE_MODELS,
    ApiSchemaError,
    ParsedModel,
    ParsedVersion,
    parse_model,
    raw_hash,
)
from crawler.registry_writer import ErrorRecord, PageResult, RegistryStore
from registry.errors import CarlosError, DatabaseError, first_line
from registry.models import utcnow
from registry.retry import RetryPolicy, retry_call
from registry.states import FileState

log = logging.getLogger("crawler.sync")
MODELS_PATH = "/api/v1/models"
MAX_ERROR_SAMPLES = 50


class CrawlFailed(CarlosError):
    """The crawl as a whole could not run (e.g. the first page never came)."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says a disk is full: SQLite, PostgreSQL or the OS."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
            return True
        if getattr(cur, "sqlstate", None) == "53100" or "database or disk is full" in str(cur):
            return True
        cur = getattr(cur, "orig", None) or cur.__cause__ or cur.__context__
    return False


@dataclass
class CrawlOptions:
    base_models: tuple[str, ...] = SDXL_BASE_MODELS
    max_models: int | None = None
    full: bool = False
    download: bool = True
    concurrency: int = 4
    page_limit: int = 100
    policy: RetryPolicy = HTTP_RETRY
    timeout: float = 60.0  # idle read timeout: a body with no data for this long is stalled
    connect_timeout: float = 30.0
    limits: DownloadLimits = field(default_factory=DownloadLimits)
    min_rate: float = 16 * 1024  # bytes/s a body must average after its first ``timeout`` seconds
    deadline: float | None = (
        None  # seconds for the whole run (scheduled runs); then it ends ``partial``
    )
    max_stale_pages: int = (
        20  # consecutive pages without a new model end the listing (an endless cursor)
    )
    model_ids: tuple[int, ...] | None = (
        None  # fetch these models by id instead of walking the listing
    )

    @property
    def unfiltered(self) -> bool:
        return set(self.base_models) == set(SDXL_BASE_MODELS)

    def describe(self) -> dict:
        if self.model_ids is not None:
            return {
                "models": len(self.model_ids),
                "download": self.download,
                "concurrency": self.concurrency,
            }
        return {
            "base_models": list(self.base_models),
            "max_models": self.max_models,
            "full": self.full,
            "download": self.download,
            "concurrency": self.concurrency,
            "sort": "Oldest",
        }


@dataclass
class CrawlStats:
    run_id: int | None = None
    status: str = "running"
    base_url: str = ""
    complete: bool = False
    gone_check: str = "off"
    pages: int = 0
    requests: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)  # by the kind of error retried
    models_listed: int = 0
    models_kept: int = 0
    models_dropped: int = 0
    duplicates: int = 0
    models_new: int = 0
    models_updated: int = 0
    versions_new: int = 0
    versions_updated: int = 0
    models_gone: int = 0
    versions_gone: int = 0
    files_queued: int = 0
    files_verified: int = 0
    files_failed: int = 0
    files_quarantined: int = 0
    files_deferred: int = 0
    bytes_downloaded: int = 0
    errors: int = 0
    cursor: str | None = None
    seconds: float = 0.0
    error_samples: list[dict] = field(default_factory=list)

    def summary(self, options: CrawlOptions) -> dict[str, Any]:
        doc = asdict(self)
        # the retry counters as flat names: retry/count, retry/reason/<kind> (http, timeout, ...)
        doc["retry/count"] = self.retries
        doc.update(
            {f"retry/reason/{kind}": n for kind, n in sorted(doc.pop("retry_reasons").items())}
        )
        doc["options"] = options.describe()
        doc["models_per_second"] = (
            round(self.models_listed / self.seconds, 1) if self.seconds > 0 else None
        )
        return doc


class Reporter:
    """Progress callbacks (the CLI draws them with rich); the default reports nothing."""

    shows_problems = (
        False  # True: problems reach the user here, so the log keeps them at INFO (said once)
    )

    def refresh(self, stats: CrawlStats) -> None:
        pass

    def problem(self, message: str) -> None:
        pass


class Crawler:
    def __init__(
        self,
        app,
        options: CrawlOptions,
        reporter: Reporter | None = None,
        *,
        client_kwargs: dict | None = None,
    ):
        self.app = app
        self.options = options
        self.reporter = reporter or Reporter()
        self.client_kwargs = client_kwargs or {}
        check_base_url(app.settings.civitai_base_url)
        self.stats = CrawlStats(base_url=safe_url(app.settings.civitai_base_url))
        self.store = RegistryStore(app.db, app)
        self._db_retry = RetryPolicy.from_env()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carlos-reg-writer")
        self._listed: set[int] = set()  # every model id the listing returned
        self._seen: dict[int, str] = {}  # kept model id -> hash of what was taken
        self._seen_versions: set[int] = set()
        self._queued_files: set[int] = set()
        self._errors: list[ErrorRecord] = []
        self._truncated = False

    # -------------------------------------------------------------- plumbing

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
        if (
            client is not None
        ):  # every problem is stored, printed and logged: never with the token in it
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
            await self._write(self.store.add_errors, self.stats.run_id, errors)

    def _run_values(self) -> dict:
        s = self.stats
        return dict(
            status=s.status,
            cursor=s.cursor,
            pages=s.pages,
            requests=s.requests,
            models_seen=s.models_listed,
            models_written=s.models_new + s.models_updated,
            versions_new=s.versions_new,
            versions_gone=s.versions_gone,
            files_verified=s.files_verified,
            files_failed=s.files_failed + s.files_quarantined,
            bytes_downloaded=s.bytes_downloaded,
            error_count=s.errors,
        )

    # -------------------------------------------------------------- the run

    async def run(self) -> CrawlStats:
        started = time.monotonic()
        params = {**self.options.describe(), "base_url": self.stats.base_url}
        self.stats.run_id = await self._write(self.store.start_run, params)
        failure: BaseException | None = None
        try:
            async with CivitaiClient(
                self.app.settings.civitai_base_url,
                self.app.settings.civitai_api_key,
                policy=self.options.policy,
                per_host=self.options.concurrency,
                timeout=self.options.timeout,
                connect_timeout=self.options.connect_timeout,
                min_rate=self.options.min_rate,
                **self.client_kwargs,
            ) as client:
                self.client = client
                limit = asyncio.timeout(self.options.deadline)
                try:
                    async with limit:
                        await self._crawl(client)
                except TimeoutError:
                    if not limit.expired():
                        raise
                    # a hostile or broken server must not hold a scheduled run (and its lease) forever
                    self._error(
                        "run",
                        None,
                        f"the run reached its deadline of {self.options.deadline:g} s and "
                        "stopped (partial downloads are kept for the next run)",
                    )
                    self.stats.status = "partial"
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.stats.seconds = round(time.monotonic() - started, 3)
            if isinstance(failure, (asyncio.CancelledError, KeyboardInterrupt)):
                self.stats.status = "interrupted"
            elif failure is not None:
                self.stats.status = "failed"
            await asyncio.shield(self._finish())
        return self.stats

    async def _finish(self) -> None:
        try:
            await self._flush_errors()
            await self._write(
                self.store.update_run,
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

    async def _crawl(self, client: CivitaiClient) -> None:
        downloads: asyncio.Queue[DownloadTask] = asyncio.Queue()
        workers = [
            asyncio.create_task(self._download_worker(downloads))
            for _ in range(self.options.concurrency if self.options.download else 0)
        ]
        if self.options.model_ids is not None:
            try:
                await self._fetch_models(client, downloads)
                await downloads.join()
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                self._sync_counters()
            return
        pages: asyncio.Queue = asyncio.Queue(
            maxsize=2
        )  # the lister runs at most two pages ahead of the writer
        consumer = asyncio.create_task(self._consume(pages, downloads))
        lister = asyncio.create_task(self._list(client, pages))
        try:
            await asyncio.wait({lister, consumer}, return_when=asyncio.FIRST_COMPLETED)
            if (
                consumer.done()
            ):  # before the end of the listing it can only have failed (e.g. the database)
                lister.cancel()
                await asyncio.gather(lister, return_exceptions=True)
                consumer.result()
            complete = await lister
            # the consumer may fail while the queue is full: then the end marker would wait forever
            end = asyncio.create_task(pages.put(None))
            await asyncio.wait({end, consumer}, return_when=asyncio.FIRST_COMPLETED)
            if not end.done():
                end.cancel()
            await consumer
            self.stats.complete = complete
            self.stats.status = "ok" if complete else "partial"
            await self._gone_check(client, downloads)
            await downloads.join()
        finally:
            for task in (lister, consumer, *workers):
                task.cancel()
            await asyncio.gather(lister, consumer, *workers, return_exceptions=True)
            self._sync_counters()

    async def _fetch_models(self, client: CivitaiClient, downloads: asyncio.Queue) -> None:
        """Fetch ``options.model_ids`` one by one (``/api/v1/models/{id}``) and store their SDXL LoRA
        versions as a listing page would: for rows known only by id, such as imported signatures."""
        limit = asyncio.Semaphore(self.options.concurrency)
        missing = 0

        async def fetch(model_id: int) -> None:
            nonlocal missing
            async with limit:
                try:
                    doc = await client.get_json(f"{MODELS_PATH}/{model_id}")
                except CivitaiError as exc:
                    missing += 1
                    gone = exc.status in (404, 410)
                    self._error(
                        "fetch",
                        f"model {model_id}",
                        "not on Civitai (deleted or never public)"
                        if gone
                        else f"could not be fetched: {exc}",
                        exc.status,
                    )
                    return
            self.stats.pages += 1
            batch = self._select([doc])
            if not batch and isinstance(doc, dict) and doc.get("id") == model_id:
                self._error(
                    "fetch", f"model {model_id}", "not an SDXL LoRA on Civitai: nothing to fill in"
                )
            await self._ingest(batch, downloads)

        await asyncio.gather(*(fetch(m) for m in self.options.model_ids))
        self.stats.complete = missing == 0
        self.stats.status = "ok" if missing == 0 else "partial"

    def _sync_counters(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            self.stats.requests, self.stats.retries = client.requests, client.retries
            self.stats.retry_reasons = dict(client.retry_reasons)
        self.reporter.refresh(self.stats)

    # -------------------------------------------------------------- listing

    def _list_params(self, cursor: str | None) -> list[tuple[str, str]]:
        params = [("types", t) for t in LORA_TYPES] + [
            ("baseModels", b) for b in self.options.base_models
        ]
        # archived=true: archived models are listed too (marked, never downloaded); Civitai hides them otherwise
        params += [
            ("limit", str(self.options.page_limit)),
            ("nsfw", "true"),
            ("archived", "true"),
            ("sort", "Oldest"),
        ]
        return params + ([("cursor", cursor)] if cursor is not None else [])

    async def _list(self, client: CivitaiClient, pages: asyncio.Queue) -> bool:
        """Walk the cursor; True when the listing reached its end.

        The next page is requested before the current one is parsed, so the server works while we do.
        """

        def fetch(cursor: str | None) -> asyncio.Task:
            return asyncio.create_task(
                client.get_json(MODELS_PATH, self._list_params(cursor), _envelope)
            )

        pending: asyncio.Task | None = fetch(None)
        requested: set[str | None] = {None}
        stale = 0  # consecutive pages that brought no model not listed before
        try:
            while pending is not None:
                try:
                    items, next_cursor = await pending
                except CivitaiError as exc:
                    where = f"page {self.stats.pages + 1}"
                    if self.stats.pages == 0:
                        self._error("page", where, str(exc), exc.status)
                        raise CrawlFailed(
                            f"the crawl could not start: the first page of {self.stats.base_url}"
                            f"{MODELS_PATH} failed: {exc}"
                        ) from None
                    self._error(
                        "page",
                        where,
                        f"{exc}; the listing stops here (the next crawl starts over)",
                        exc.status,
                    )
                    return False
                self.stats.pages += 1
                pending, complete = None, next_cursor is None
                ids = {
                    item["id"]
                    for item in items
                    if isinstance(item, dict) and type(item.get("id")) is int
                }
                stale = 0 if ids - self._listed else stale + 1
                if next_cursor in requested and not complete:
                    self._error(
                        "page",
                        f"page {self.stats.pages}",
                        "the server returned a cursor it had already "
                        "returned (a loop); the listing stops here",
                    )
                elif not complete and client.holds_token(next_cursor):
                    self._error(
                        "page",
                        f"page {self.stats.pages}",
                        "the server returned a cursor that holds the "
                        "API token; it is not followed or stored",
                    )
                elif not complete and stale >= self.options.max_stale_pages:
                    self._error(
                        "page",
                        f"page {self.stats.pages}",
                        f"{stale} consecutive pages brought no new model (an endless cursor?); the listing "
                        "stops here",
                    )
                elif not complete:
                    requested.add(next_cursor)
                    self.stats.cursor = next_cursor
                    pending = fetch(next_cursor)
                    await asyncio.sleep(0)  # let it send the request before we parse
                await pages.put(self._select(items))
                self._sync_counters()
                if self._truncated:
                    return False
                if pending is None:
                    return complete
            return False
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    def _select(self, items: list) -> list[tuple[ParsedModel, list[ParsedVersion]]]:
        batch = []
        allowed = frozenset(self.options.base_models)
        for item in items:
            self.stats.models_listed += 1
            try:
                model = parse_model(item)
            except ApiSchemaError as exc:
                ref = item.get("id") if isinstance(item, dict) else None
                self._error(
                    "model", f"model {ref}" if ref is not None else None, f"unusable item: {exc}"
                )
                continue
            for note in model.skipped:
                self._error("model", f"model {model.id}", f"part of the item skipped: {note}")
            self._listed.add(model.id)
            versions = model.keep_versions(allowed) if model.is_lora else []
            if not versions:
                self.stats.models_dropped += 1  # not an SDXL-architecture LoRA (or no such version)
                continue
            taken = raw_hash([model.raw_hash] + [v.raw_hash for v in versions])
            if self._seen.get(model.id) == taken:
                self.stats.duplicates += 1
                continue
            if model.id not in self._seen:
                if (
                    self.options.max_models is not None
                    and len(self._seen) >= self.options.max_models
                ):
                    self._truncated = True
                    break
                self.stats.models_kept += 1
            self._seen[model.id] = taken
            self._seen_versions.update(v.id for v in versions)
            batch.append((model, versions))
        return batch

    async def _consume(self, pages: asyncio.Queue, downloads: asyncio.Queue) -> None:
        while (batch := await pages.get()) is not None:
            await self._ingest(batch, downloads)

    async def _store_page(self, batch) -> list[PageResult]:
        """Write a page; if that fails, item by item, so one unstorable item costs only itself.

        When every item fails the cause is the registry, not the data: the error propagates.
        """
        try:
            return [await self._write(self.store.apply_models, batch, utcnow())]
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
                    results.append(await self._write(self.store.apply_models, [item], utcnow()))
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
                await self._write(self.store.update_run, s.run_id, self._run_values())
            if self.options.download:
                for task in await self._write(
                    self.store.download_tasks, [v.id for _, vs in batch for v in vs]
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
        store = self.app.settings.artifacts
        while True:
            task = await downloads.get()
            try:
                outcome = await download(
                    self.client, store, task, self.options.limits, self._on_bytes
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
        newly = await self._write(self.store.record_download, task, outcome)
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

    # -------------------------------------------------------------- disappearance

    def _gone_check_blocker(self) -> str | None:
        if not self.options.full:
            return "off (not a --full crawl)"
        if not self.options.unfiltered:
            return "skipped: --base-model narrows the listing"
        if self.options.max_models is not None:
            return "skipped: --max-models limits the listing"
        if not self.stats.complete:
            return "skipped: the listing did not reach its end"
        if any(e["stage"] == "page" for e in self.stats.error_samples):
            return "skipped: a page failed"
        return None

    async def _gone_check(self, client: CivitaiClient, downloads: asyncio.Queue) -> None:
        blocker = self._gone_check_blocker()
        if blocker is not None:
            self.stats.gone_check = blocker
            return
        alive_models, alive_versions = await self._write(self.store.alive_ids)
        missing_versions = {
            vid: mid for vid, mid in alive_versions.items() if vid not in self._seen_versions
        }
        candidates = sorted((alive_models - self._listed) | set(missing_versions.values()))
        gone_models: set[int] = set()
        gone_versions: set[int] = set()
        unconfirmed = 0
        limit = asyncio.Semaphore(self.options.concurrency)

        async def confirm(model_id: int) -> None:
            nonlocal unconfirmed
            async with limit:
                try:
                    doc = await client.get_json(f"{MODELS_PATH}/{model_id}")
                except CivitaiError as exc:
                    if exc.status in (404, 410):
                        gone_models.add(model_id)
                    else:
                        unconfirmed += 1
                        self._error(
                            "gone",
                            f"model {model_id}",
                            f"cannot confirm whether it is gone: {exc}",
                            exc.status,
                        )
                    return
            try:
                model = parse_model(doc)
                if model.id != model_id:
                    raise ApiSchemaError(f"asked for model {model_id}, got {model.id}")
            except ApiSchemaError as exc:
                unconfirmed += 1
                self._error(
                    "gone", f"model {model_id}", f"cannot confirm whether it is gone: {exc}"
                )
                return
            versions = model.keep_versions(frozenset(SDXL_BASE_MODELS)) if model.is_lora else []
            if not versions:
                gone_models.add(model_id)  # still upstream, but no longer an SDXL LoRA
                return
            present = {v.id for v in versions}
            gone_versions.update(
                vid
                for vid, mid in missing_versions.items()
                if mid == model_id and vid not in present
            )
            self._seen_versions.update(present)
            await self._ingest([(model, versions)], downloads)

        await asyncio.gather(*(confirm(m) for m in candidates))
        n_models, n_versions = await self._write(
            self.store.mark_gone, gone_models, gone_versions, utcnow()
        )
        self.stats.models_gone += n_models
        self.stats.versions_gone += n_versions
        self.stats.gone_check = f"done: {len(candidates)} model(s) not listed were checked" + (
            f", {unconfirmed} could not be confirmed" if unconfirmed else ""
        )


def _envelope(doc: Any) -> tuple[list, str | None]:
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise ValueError("the page is not an object with an 'items' list")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    cursor = meta.get("nextCursor")
    if isinstance(cursor, bool) or not isinstance(cursor, (str, int)) or cursor == "":
        cursor = None
    return doc["items"], (str(cursor) if cursor is not None else None)


def _file_ref(task: DownloadTask) -> str:
    return f"version {task.version_id} file {task.civitai_file_id or task.file_id}"


async def run_crawl(
    app, options: CrawlOptions, reporter: Reporter | None = None, **kwargs
) -> CrawlStats:
    return await Crawler(app, options, reporter, **kwargs).run()


def crawl(app, options: CrawlOptions, reporter: Reporter | None = None, **kwargs) -> CrawlStats:
    """Run a crawl to completion (blocking); raises ``CrawlFailed`` when it could not run at all."""
    return asyncio.run(run_crawl(app, options, reporter, **kwargs))
