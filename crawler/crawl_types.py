"""A crawl's value types: what it is asked to do (``CrawlOptions``), what it counts
(``CrawlStats``), who watches it (``Reporter``), and how it fails as a whole (``CrawlFailed``,
``disk_full``). ``crawler.sync`` runs the crawl; see its docstring for the contract.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass, field
from typing import Any

from crawler.client import HTTP_RETRY
from crawler.download import DownloadLimits
from crawler.parse import SDXL_BASE_MODELS
from registry.errors import CarlosError
from registry.retry import RetryPolicy

MODELS_PATH = "/api/v1/models"  # the listing; one model is at MODELS_PATH/{id}


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
    # seconds for the whole run (scheduled runs); then it ends ``partial``
    deadline: float | None = None
    # consecutive pages without a new model end the listing (an endless cursor)
    max_stale_pages: int = 20
    # fetch these models by id instead of walking the listing
    model_ids: tuple[int, ...] | None = None

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
    models_seen: int = 0
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
            round(self.models_seen / self.seconds, 1) if self.seconds > 0 else None
        )
        return doc


class Reporter:
    """Progress callbacks (the CLI draws them with rich); the default reports nothing."""

    # True: problems reach the user here, so the log keeps them at INFO (said once)
    shows_problems = False

    def refresh(self, stats: CrawlStats) -> None:
        pass

    def problem(self, message: str) -> None:
        pass
