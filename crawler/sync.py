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
  ``interrupted`` (cancelled — Ctrl-C, or SIGTERM through the ``crawl`` command — or killed:
  the next crawl on the same host marks a run whose process is gone).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from crawler.client import CivitaiClient, check_base_url
from crawler.crawl_types import (
    MODELS_PATH,
    CrawlFailed,
    CrawlOptions,
    CrawlStats,
    Reporter,
)
from crawler.download import DownloadTask
from crawler.http_errors import CivitaiError, safe_url
from crawler.ingest import IngestSteps
from crawler.model_lookups import ModelLookups
from crawler.parse import (
    LORA_TYPES,
    ApiSchemaError,
    ParsedModel,
    ParsedVersion,
    parse_model,
    raw_hash,
)
from crawler.registry_writer import ErrorRecord, RegistryStore
from crawler.run_record import RunRecord
from registry.retry import RetryPolicy


class Crawler(RunRecord, IngestSteps, ModelLookups):
    """One crawl run: the run and the listing here; its record in ``RunRecord``
    (``crawler.run_record``); storing pages and downloading in ``IngestSteps`` (``crawler.ingest``);
    by-id fetches and the gone check in ``ModelLookups`` (``crawler.model_lookups``)."""

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
        self.writer = RegistryStore(app.db, app)
        self._db_retry = RetryPolicy.from_env()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carlos-reg-writer")
        self._listed: set[int] = set()  # every model id the listing returned
        self._seen: dict[int, str] = {}  # kept model id -> hash of what was taken
        self._seen_versions: set[int] = set()
        self._queued_files: set[int] = set()
        self._errors: list[ErrorRecord] = []
        self._truncated = False

    # -------------------------------------------------------------- the run

    async def run(self) -> CrawlStats:
        started = time.monotonic()
        params = {**self.options.describe(), "base_url": self.stats.base_url}
        self.stats.run_id = await self._write(self.writer.start_run, params)
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
        # the lister runs at most two pages ahead of the writer
        pages: asyncio.Queue = asyncio.Queue(maxsize=2)
        consumer = asyncio.create_task(self._consume(pages, downloads))
        lister = asyncio.create_task(self._list(client, pages))
        try:
            await asyncio.wait({lister, consumer}, return_when=asyncio.FIRST_COMPLETED)
            # before the end of the listing the consumer can only have failed (e.g. the database)
            if consumer.done():
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
                    self._page_failed(exc)
                    return False
                self.stats.pages += 1
                pending, complete = None, next_cursor is None
                stale = 0 if _item_ids(items) - self._listed else stale + 1
                problem = (
                    None
                    if complete
                    else self._cursor_problem(client, next_cursor, requested, stale)
                )
                if problem is not None:
                    self._error("page", f"page {self.stats.pages}", problem)
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

    def _page_failed(self, exc: CivitaiError) -> None:
        """Record a page that failed after its retries; when it is the first, the crawl fails."""
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

    def _cursor_problem(
        self, client: CivitaiClient, cursor: str, requested: set[str | None], stale: int
    ) -> str | None:
        """Why the listing must not follow ``cursor`` (it would loop, leak the token or never
        end), or None to follow it."""
        if cursor in requested:
            return (
                "the server returned a cursor it had already "
                "returned (a loop); the listing stops here"
            )
        if client.holds_token(cursor):
            return (
                "the server returned a cursor that holds the "
                "API token; it is not followed or stored"
            )
        if stale >= self.options.max_stale_pages:
            return (
                f"{stale} consecutive pages brought no new model (an endless cursor?); the listing "
                "stops here"
            )
        return None

    def _select(self, items: list) -> list[tuple[ParsedModel, list[ParsedVersion]]]:
        batch = []
        allowed = frozenset(self.options.base_models)
        for item in items:
            self.stats.models_seen += 1
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


def _item_ids(items: list) -> set[int]:
    return {item["id"] for item in items if isinstance(item, dict) and type(item.get("id")) is int}


def _envelope(doc: Any) -> tuple[list, str | None]:
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise ValueError("the page is not an object with an 'items' list")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    cursor = meta.get("nextCursor")
    if isinstance(cursor, bool) or not isinstance(cursor, (str, int)) or cursor == "":
        cursor = None
    return doc["items"], (str(cursor) if cursor is not None else None)


async def run_crawl(
    app, options: CrawlOptions, reporter: Reporter | None = None, **kwargs
) -> CrawlStats:
    return await Crawler(app, options, reporter, **kwargs).run()


def crawl(app, options: CrawlOptions, reporter: Reporter | None = None, **kwargs) -> CrawlStats:
    """Run a crawl to completion (blocking); raises ``CrawlFailed`` when it could not run at all."""
    return asyncio.run(run_crawl(app, options, reporter, **kwargs))
