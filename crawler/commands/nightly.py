"""The scheduled run's crawl step (``registry.service`` runs it; ``serve`` schedules it)."""

from __future__ import annotations

from registry.app import App

NIGHTLY_CRAWL_DEADLINE = 20 * 3600.0


def nightly_crawl(app: App, options: dict) -> dict:
    """The scheduled run's crawl: everything SDXL, files downloaded, gone models marked.

    Stops early (recorded as interrupted, partial downloads kept for resuming) when the service
    shuts down.
    """
    import asyncio

    from crawler.crawl_types import CrawlOptions
    from crawler.sync import Crawler

    # A deadline: a server that trickles bytes or never ends its cursor must not hold the nightly
    # lease forever (every later run would be skipped).
    crawl_options = CrawlOptions(
        full=True,
        download=options.get("download", True),
        deadline=options.get("crawl_deadline", NIGHTLY_CRAWL_DEADLINE),
    )
    crawler = Crawler(app, crawl_options, None)
    stop = options.get("stop")

    async def run_until_stopped():
        task = asyncio.ensure_future(crawler.run())
        while not task.done():
            if stop is not None and stop.is_set():
                task.cancel()
                break
            await asyncio.wait({task}, timeout=0.5)
        try:
            await task
        except asyncio.CancelledError:
            crawler.stats.status = "interrupted"

    asyncio.run(run_until_stopped())
    summary = crawler.stats.summary(crawl_options)
    keep = (
        "run_id",
        "status",
        "models_seen",
        "models_new",
        "models_updated",
        "models_gone",
        "versions_new",
        "versions_gone",
        "files_verified",
        "files_failed",
        "bytes_downloaded",
        "errors",
        "seconds",
    )
    out = {k: summary.get(k) for k in keep}
    if summary.get("status") == "failed":
        out["error"] = (
            f"crawl failed ({summary.get('errors')} problems recorded in crawl run {summary.get('run_id')})"
        )
    return out
