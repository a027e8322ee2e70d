"""The crawler's CLI plugin: ``crawl``, ``crawls``, ``mirror serve`` and ``mirror export``.

Progress goes to stderr (rich); ``--json`` prints exactly one document on stdout. ``crawl`` exits
non-zero only when the crawl as a whole could not run (then its one-line reason is on stderr and
the run is still recorded); failed pages and files are counted, recorded in ``crawl_error`` and
listed by ``crawls RUN``. Heavy modules (aiohttp) load only inside the commands.
"""

from __future__ import annotations

import re
import time

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.errors import CarlosError, UsageError
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
@click.option(
    "--max-backoff",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Cap of the exponential backoff between retries (Retry-After may ask for more).",
)
@click.option(
    "--max-retry-after",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="Honour a server's Retry-After up to this long; a longer one fails the request instead.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.05),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="A request or body with no data for this long counts as stalled; after it, a body must "
    "average 16 KiB/s.",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=1),
    metavar="SECONDS",
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
    import asyncio
    from dataclasses import replace

    from crawler.client import HTTP_RETRY
    from crawler.crawl_types import CrawlFailed, CrawlOptions
    from crawler.download import DownloadLimits
    from crawler.parse import SDXL_BASE_MODELS, canonical_base_model
    from crawler.sync import Crawler

    chosen = []
    for name in base_models:
        canon = canonical_base_model(name)
        if canon is None:
            raise UsageError(
                f"--base-model {name!r} is not an SDXL-architecture base model; "
                f"choose from: {', '.join(SDXL_BASE_MODELS)}"
            )
        if canon not in chosen:
            chosen.append(canon)
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
        base_models=tuple(chosen) or SDXL_BASE_MODELS,
        max_models=max_models,
        full=full,
        download=download,
        concurrency=concurrency,
        timeout=timeout,
        deadline=deadline,
        policy=replace(
            HTTP_RETRY,
            max_attempts=retries + 1,
            initial=min(1.0, max_backoff),
            cap=max_backoff,
            retry_after_max=max_retry_after,
        ),
        limits=DownloadLimits(
            max_file_bytes=parse_size(max_file_size), min_free_bytes=parse_size(min_free_space)
        ),
    )
    _ = app.db  # migrate before the progress display starts
    with _RichReporter() as reporter:
        crawler = Crawler(app, options, reporter)
        try:
            asyncio.run(crawler.run())
            failure = None
        except CrawlFailed as exc:
            failure = exc
    stats = crawler.stats
    summary = stats.summary(options)
    if as_json:
        emit_json(summary)
    else:
        _print_summary(summary)
    if failure is not None:
        raise failure


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


@click.command()
@click.argument("run_id", required=False, type=int)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Runs (or errors) shown.",
)
@output_options
@pass_app
def crawls(app: App, run_id, limit, as_json):
    """List recent crawl runs, or show one run with its recorded problems."""
    import sqlalchemy as sa

    from registry.errors import NotFound
    from registry.models import CrawlError, CrawlRun

    def run_dict(r: CrawlRun) -> dict:
        return {
            "id": r.id,
            "status": r.status,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "params": r.params,
            "cursor": r.cursor,
            "pages": r.pages,
            "requests": r.requests,
            "models_seen": r.models_seen,
            "models_written": r.models_written,
            "versions_new": r.versions_new,
            "versions_gone": r.versions_gone,
            "files_verified": r.files_verified,
            "files_failed": r.files_failed,
            "bytes_downloaded": r.bytes_downloaded,
            "error_count": r.error_count,
        }

    with app.db.read() as s:
        if run_id is None:
            runs = (
                s.execute(sa.select(CrawlRun).order_by(CrawlRun.id.desc()).limit(limit))
                .scalars()
                .all()
            )
            docs = [run_dict(r) for r in runs]
            if as_json:
                emit_json({"runs": docs})
                return
            table(
                [
                    "#",
                    "status",
                    "started",
                    "pages",
                    "models",
                    "versions new",
                    "files verified",
                    "failed",
                    "problems",
                ],
                [
                    (
                        d["id"],
                        d["status"],
                        _when(d["started_at"]),
                        d["pages"],
                        d["models_seen"],
                        d["versions_new"],
                        d["files_verified"],
                        d["files_failed"],
                        d["error_count"],
                    )
                    for d in docs
                ],
            )
            if not docs:
                info("no crawl yet: try `carlos-reg crawl`")
            return
        run = s.get(CrawlRun, run_id)
        if run is None:
            raise NotFound(f"no crawl run {run_id}")
        errors = (
            s.execute(
                sa.select(CrawlError)
                .where(CrawlError.run_id == run_id)
                .order_by(CrawlError.id)
                .limit(limit)
            )
            .scalars()
            .all()
        )
        doc = run_dict(run)
        doc["errors"] = [
            {
                "at": e.at,
                "stage": e.stage,
                "item": e.ref,
                "status": e.status_code,
                "message": e.message,
            }
            for e in errors
        ]
    if as_json:
        emit_json(doc)
        return
    table(["field", "value"], _run_rows(doc), title=f"crawl run {run_id}", wrap=True)
    if doc["errors"]:
        table(
            ["stage", "item", "status", "message"],
            [(e["stage"], e["item"], e["status"], e["message"]) for e in doc["errors"]],
            title="problems",
            wrap=True,
        )
        if run.error_count > len(doc["errors"]):
            info(f"{len(doc['errors'])} of {run.error_count} shown; use --limit")


def _when(value) -> str:
    """A timestamp to the second, in UTC (the registry stores UTC)."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _run_rows(doc: dict) -> list[tuple[str, object]]:
    """One crawl run as readable (label, value) rows: times to the second, parameters one per line."""
    started, finished = doc["started_at"], doc["finished_at"]
    params = doc["params"] or {}
    rows = [
        ("run", doc["id"]),
        ("status", doc["status"]),
        ("started", _when(started)),
        (
            "finished",
            _when(finished)
            + (f" ({(finished - started).total_seconds():.0f} s)" if started and finished else ""),
        ),
        (
            "parameters",
            "\n".join(
                f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in params.items()
                if v is not None and v != []
            ),
        ),
        ("resume cursor", doc["cursor"] or ""),
    ]
    labels = {
        "pages": "pages",
        "requests": "requests",
        "models_seen": "models seen",
        "models_written": "models written",
        "versions_new": "versions new",
        "versions_gone": "versions gone",
        "files_verified": "files verified",
        "files_failed": "files failed",
        "bytes_downloaded": "bytes downloaded",
        "error_count": "problems",
    }
    rows += [(label, doc[key]) for key, label in labels.items()]
    return rows


@click.group()
def mirror():
    """A Civitai-compatible API served from a directory (see docs/mirror.md)."""


@mirror.command(name="serve")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="0: any free port.",
)
@click.option(
    "--token",
    envvar="CARLOS_REG_MIRROR_TOKEN",
    metavar="TOKEN",
    help="Require this Bearer token for downloads [env CARLOS_REG_MIRROR_TOKEN].",
)
@click.option(
    "--public-url",
    metavar="URL",
    help="Base URL clients use (behind a proxy); URLs in answers start with it [default: the address "
    "each client connected to, never its Host header].",
)
def mirror_serve(directory, host, port, token, public_url):
    """Serve DIRECTORY as /api/v1/models, /api/v1/model-versions/… and /api/download/models/… until Ctrl-C."""
    from crawler.mirror import MirrorError, serve

    def announce(url, catalog):
        for problem in catalog.problems:
            info(f"warning: {problem}")
        info(
            f"serving {len(catalog.ids)} model(s) from {directory} at {url}"
            + (" (downloads need the token)" if token else "")
            + f"; crawl it with CIVITAI_BASE_URL={url}"
        )

    try:
        serve(
            directory,
            host=host,
            port=port,
            token=token or None,
            public_url=public_url,
            announce=announce,
        )
    except MirrorError as exc:
        raise CarlosError(str(exc)) from None
    except OSError as exc:
        raise CarlosError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@mirror.command(name="export")
@click.argument("directory", type=click.Path(file_okay=False))
@output_options
@pass_app
def mirror_export(app: App, directory, as_json):
    """Write the registry's crawled models and verified files to DIRECTORY in the mirror format."""
    from crawler.mirror import MirrorError, export_mirror

    try:
        counts = export_mirror(app.db, app.settings.artifacts, directory)
    except MirrorError as exc:
        raise CarlosError(str(exc)) from None
    if as_json:
        emit_json({"directory": directory, **counts})
    else:
        info(
            f"exported {counts['models']} model(s), {counts['versions']} version(s) and {counts['files']} "
            f"verified file(s) to {directory}; serve it with `carlos-reg mirror serve {directory}`"
        )


@hookimpl
def register_commands(cli):
    cli.add_command(crawl)
    cli.add_command(crawls)
    cli.add_command(mirror)


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


NIGHTLY_CRAWL_DEADLINE = 20 * 3600.0


@hookimpl
def register_nightly_steps(register):
    register("crawl", nightly_crawl, 100)
