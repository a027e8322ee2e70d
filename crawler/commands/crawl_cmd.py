"""``crawl``: sync SDXL LoRAs from Civitai into the registry (``crawler.sync`` does the work).

Progress goes to stderr (rich); ``--json`` prints exactly one document on stdout. It exits
non-zero only when the crawl as a whole could not run (then its one-line reason is on stderr and
the run is still recorded). aiohttp and the crawler load inside the command.
"""

from __future__ import annotations

import re
import signal
import sys
import time

import click

from registry.app import App, pass_app
from registry.cli_options import seconds_option
from registry.errors import UsageError
from registry.output import emit_json, err, info, output_options, plain, table

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
}


def parse_size(text: str) -> int:
    """'4G', '512MiB', '1048576' → bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text or "")
    if not m or m.group(2).lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size like 4G, 512M or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class _RichReporter:
    """Draws crawl progress on stderr; problems are printed as they happen."""

    def __init__(self):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self.task = self.progress.add_task("starting")
        self._last = 0.0

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def refresh(self, s) -> None:
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        self.progress.update(
            self.task,
            description=(
                f"pages {s.pages} · models {s.models_kept} · versions +{s.versions_new} ~{s.versions_updated} · "
                f"files {s.files_verified} verified / {s.files_queued} queued · {human_bytes(s.bytes_downloaded)}"
                + (f" · {s.errors} problem(s)" if s.errors else "")
            ),
        )

    shows_problems = True

    def problem(self, message: str) -> None:
        self.progress.console.print(plain(f"! {message}"), highlight=False)


@click.command()
@click.option(
    "--base-model",
    "base_models",
    multiple=True,
    metavar="NAME",
    help="Only this SDXL-family base model (repeatable) [default: all of SDXL 1.0, SDXL 0.9, SDXL 1.0 LCM, "
    "SDXL Turbo, SDXL Lightning, SDXL Hyper, Pony, Illustrious, NoobAI].",
)
@click.option(
    "--max-models", type=click.IntRange(min=1), metavar="N", help="Stop after N LoRA models."
)
@click.option(
    "--full",
    is_flag=True,
    help="Also mark models/versions that disappeared upstream as gone (each confirmed first); "
    "needs an unfiltered listing that reaches its end.",
)
@click.option(
    "--model",
    "model_ids",
    multiple=True,
    type=click.IntRange(min=1),
    metavar="ID",
    help="Fetch this Civitai model by id instead of walking the listing (repeatable).",
)
@click.option(
    "--imported",
    is_flag=True,
    help="Fetch the models of imported signatures (`import carlos`) that lack Civitai metadata: base "
    "model, trigger words, tags, descriptions, files and hashes.",
)
@click.option(
    "--download/--no-download",
    default=True,
    show_default=True,
    help="Download and verify the primary safetensors file of each version.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Parallel downloads, and connections per host.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 20),
    default=5,
    show_default=True,
    help="Retries of a failing request (429, 5xx, timeouts, resets, HTML pages).",
)
@seconds_option(
    "--max-backoff",
    minimum=0,
    default=30.0,
    help="Cap of the exponential backoff between retries (Retry-After may ask for more).",
)
@seconds_option(
    "--max-retry-after",
    minimum=0,
    default=120.0,
    help="Honour a server's Retry-After up to this long; a longer one fails the request instead.",
)
@seconds_option(
    "--timeout",
    minimum=0.05,
    default=60.0,
    help="A request or body with no data for this long counts as stalled; after it, a body must "
    "average 16 KiB/s.",
)
@seconds_option(
    "--deadline",
    minimum=1,
    help="Stop the whole crawl after this long (the run is partial; downloads resume next time).",
)
@click.option(
    "--max-file-size", default="4G", show_default=True, metavar="SIZE", help="Refuse larger files."
)
@click.option(
    "--min-free-space",
    default="1G",
    show_default=True,
    metavar="SIZE",
    help="Free space to keep in the data dir besides the file being downloaded.",
)
@output_options
@pass_app
def crawl(
    app: App,
    base_models,
    max_models,
    model_ids,
    imported,
    full,
    download,
    concurrency,
    retries,
    max_backoff,
    max_retry_after,
    timeout,
    deadline,
    max_file_size,
    min_free_space,
    as_json,
):
    """Sync SDXL LoRAs (types LORA, LoCon, DoRA) from CIVITAI_BASE_URL into the registry.

    Uses CIVITAI_API_KEY (sent only as a Bearer header to that host) when set. Safe to rerun and to
    interrupt: an unchanged catalog writes nothing, and a killed download resumes.
    """
    from crawler.crawl_types import CrawlOptions
    from crawler.parse import SDXL_BASE_MODELS

    chosen = _base_models(base_models)
    wanted = _wanted_models(app, model_ids, imported)
    if wanted is not None and full:
        raise UsageError(
            "--full needs the whole listing; it cannot be combined with --model or --imported"
        )
    if wanted == ():
        info("every imported LoRA already has its Civitai metadata: nothing to fetch")
        return
    options = CrawlOptions(
        model_ids=wanted,
        base_models=chosen or SDXL_BASE_MODELS,
        max_models=max_models,
        full=full,
        download=download,
        concurrency=concurrency,
        timeout=timeout,
        deadline=deadline,
        policy=_retry_policy(retries, max_backoff, max_retry_after),
        limits=_download_limits(max_file_size, min_free_space),
    )
    stats, failure = _run_with_progress(app, options)
    summary = stats.summary(options)
    if as_json:
        emit_json(summary)
    else:
        _print_summary(summary)
    if failure is not None:
        raise failure


def _base_models(names) -> tuple[str, ...]:
    """``--base-model`` names as the API spells them, each once; a name outside SDXL is refused."""
    from crawler.parse import SDXL_BASE_MODELS, canonical_base_model

    chosen = []
    for name in names:
        canon = canonical_base_model(name)
        if canon is None:
            raise UsageError(
                f"--base-model {name!r} is not an SDXL-architecture base model; "
                f"choose from: {', '.join(SDXL_BASE_MODELS)}"
            )
        if canon not in chosen:
            chosen.append(canon)
    return tuple(chosen)


def _retry_policy(retries: int, max_backoff: float, max_retry_after: float):
    from dataclasses import replace

    from crawler.client import HTTP_RETRY

    return replace(
        HTTP_RETRY,
        max_attempts=retries + 1,
        initial=min(1.0, max_backoff),
        cap=max_backoff,
        retry_after_max=max_retry_after,
    )


def _download_limits(max_file_size: str, min_free_space: str):
    from crawler.download import DownloadLimits

    return DownloadLimits(
        max_file_bytes=parse_size(max_file_size), min_free_bytes=parse_size(min_free_space)
    )


def _run_with_progress(app: App, options):
    """Run the crawl with progress on stderr: ``(stats, None)``, or ``(stats, CrawlFailed)`` when
    it could not run (its summary is still printed before the failure is raised)."""
    import asyncio

    from crawler.crawl_types import CrawlFailed
    from crawler.sync import Crawler

    _ = app.db  # migrate before the progress display starts
    with _RichReporter() as reporter:
        crawler = Crawler(app, options, reporter)
        try:
            terminated = asyncio.run(_until_done_or_terminated(crawler))
            failure = None
        except CrawlFailed as exc:
            terminated, failure = False, exc
    if terminated:
        click.echo(
            "Terminated: the crawl run is recorded as interrupted; partial downloads are kept "
            "for the next crawl.",
            err=True,
        )
        sys.exit(128 + signal.SIGTERM)
    return crawler.stats, failure


async def _until_done_or_terminated(crawler) -> bool:
    """Run the crawl; SIGTERM (a service manager, ``kill``) stops it as Ctrl-C does: the crawl is
    cancelled at its next await, records itself ``interrupted`` and keeps its partial files.
    True when SIGTERM stopped it."""
    import asyncio

    loop, task, terminated = asyncio.get_running_loop(), asyncio.current_task(), []

    def on_sigterm() -> None:
        terminated.append(True)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await crawler.run()
    except asyncio.CancelledError:
        if not terminated:
            raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    return bool(terminated)


def _wanted_models(app: App, model_ids, imported: bool) -> tuple[int, ...] | None:
    """The model ids of a by-id crawl (``--model``/``--imported``), or None for the listing."""
    if not model_ids and not imported:
        return None
    wanted = dict.fromkeys(model_ids)
    if imported:
        import sqlalchemy as sa

        from registry.models import Version

        with app.db.read() as s:
            wanted.update(
                dict.fromkeys(
                    s.execute(
                        # crawled rows become source "civitai": what is still "carlos" was never filled in
                        sa.select(Version.model_id)
                        .where(Version.source == "carlos", Version.model_id.is_not(None))
                        .distinct()
                        .order_by(Version.model_id)
                    ).scalars()
                )
            )
    return tuple(wanted)


def _print_summary(s: dict) -> None:
    rows = [
        ("status", s["status"] + ("" if s["complete"] else " (listing did not reach its end)")),
        ("run", s["run_id"]),
        ("pages / requests / retries", f"{s['pages']} / {s['requests']} / {s['retries']}"),
        (
            "models seen / kept / dropped / duplicates",
            f"{s['models_seen']} / {s['models_kept']} / {s['models_dropped']} / {s['duplicates']}",
        ),
        (
            "models new / updated / gone",
            f"{s['models_new']} / {s['models_updated']} / {s['models_gone']}",
        ),
        (
            "versions new / updated / gone",
            f"{s['versions_new']} / {s['versions_updated']} / {s['versions_gone']}",
        ),
        (
            "files verified / failed / quarantined / deferred",
            f"{s['files_verified']} / {s['files_failed']} / {s['files_quarantined']} / {s['files_deferred']}",
        ),
        ("downloaded", human_bytes(s["bytes_downloaded"])),
        ("gone check", s["gone_check"]),
        ("problems", s["errors"]),
        ("seconds", s["seconds"]),
    ]
    table(["field", "value"], rows, title="crawl", wrap=True)
    if s["errors"]:
        info(f"{s['errors']} problem(s) recorded; see `carlos-reg crawls {s['run_id']}`")
