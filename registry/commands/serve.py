"""``carlos-reg serve``: the HTTP API and the scheduled crawl-and-index run."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.cli_options import listen_options, seconds_option
from registry.errors import UsageError
from registry.output import info

log = logging.getLogger(__name__)
DEFAULT_SCHEDULE = "0 3 * * *"


def cron_trigger(schedule: str):
    """A 5-field crontab (minute hour day month weekday) or 6 fields with seconds first; UTC."""
    from apscheduler.triggers.cron import CronTrigger

    fields = schedule.split()
    try:
        if len(fields) == 5:
            return CronTrigger.from_crontab(schedule, timezone="UTC")
        if len(fields) == 6:
            second, minute, hour, day, month, dow = fields
            return CronTrigger(
                second=second,
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=dow,
                timezone="UTC",
            )
    except ValueError as exc:
        raise UsageError(f"--schedule {schedule!r}: {exc}") from None
    raise UsageError(
        f"--schedule {schedule!r}: give 5 crontab fields (or 6 with seconds first), or 'off'"
    )


class _NightlyRuns:
    """The crawl-and-index runs this server starts: one at a time on their own thread, none once
    ``options["stop"]`` is set; a failed run is recorded and the schedule goes on."""

    def __init__(self, app: App, options: dict) -> None:
        self.app, self.options = app, options
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carlos-nightly")
        self.running: set[asyncio.Future] = set()

    async def trigger(self, kind: str = "schedule") -> None:
        from registry.service import run_nightly

        if self.options["stop"].is_set():
            return
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            self.pool, lambda: run_nightly(self.app, self.options, trigger=kind)
        )
        self.running.add(fut)
        try:
            run = await fut
            info(
                f"nightly run {run['id']}: {run['status']}"
                + (f" ({run['error']})" if run["error"] else "")
            )
        except Exception as exc:  # the run is recorded; the schedule goes on
            log.error("nightly run failed: %s", exc)
        finally:
            self.running.discard(fut)

    async def finish(self) -> None:
        """Wait for the run in progress (it finishes or releases its lease), then free the thread."""
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
        self.pool.shutdown(wait=True)


def _nightly_scheduler(schedule: str, runs: _NightlyRuns):
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    scheduler = AsyncIOScheduler(timezone="UTC", event_loop=asyncio.get_running_loop())
    scheduler.add_job(
        runs.trigger,
        cron_trigger(schedule),
        id="nightly",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=3600,
    )
    return scheduler


async def _start_site(app: App, options: dict, host: str, port: int):
    """Listen with the API app; returns the runner (to clean up) and the address it bound."""
    from aiohttp import web

    from registry.api import create_web_app, json_parse_errors

    web_app = create_web_app(app, options)
    # aiohttp's keep-alive timer also runs while a request's headers are still arriving: it is what
    # closes a connection that trickles (or never finishes) its headers.
    runner = web.AppRunner(
        web_app, handle_signals=False, keepalive_timeout=options.get("header_timeout", 15.0)
    )
    await runner.setup()
    json_parse_errors(runner)
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, (runner.addresses[0] if runner.addresses else (host, port))


async def _until_signalled() -> None:
    """Wait for SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


async def _serve(
    app: App, host: str, port: int, schedule: str | None, options: dict, run_now: bool
) -> None:
    import numpy  # noqa: F401  (threadpoolctl limits only libraries already loaded)
    from threadpoolctl import threadpool_limits

    # Requests run in parallel threads; a multi-threaded BLAS inside each would oversubscribe the
    # cores (measured: 15 vs 82 ranking requests/s on 2 cores for 100k LoRAs).
    threadpool_limits(limits=1, user_api="blas")
    runs = _NightlyRuns(app, options)
    scheduler = None
    if schedule:
        scheduler = options["scheduler"] = _nightly_scheduler(schedule, runs)
    runner, bound = await _start_site(app, options, host, port)
    if scheduler is not None:
        scheduler.start()
    info(
        f"serving http://{bound[0]}:{bound[1]}/ (API under /api/); schedule: {schedule or 'off'} (UTC)"
    )
    if run_now:
        asyncio.get_running_loop().create_task(runs.trigger("manual"))
    await _until_signalled()
    info("shutting down: no new work; the current run finishes or releases its lease")
    options["stop"].set()
    if scheduler is not None:
        scheduler.shutdown(wait=False)
    await runner.cleanup()
    await runs.finish()


@click.command()
@listen_options(port=8080, port_help="0 picks a free port.")
@click.option(
    "--schedule",
    default=DEFAULT_SCHEDULE,
    show_default=True,
    help="When the crawl-and-index run starts: crontab fields in UTC (6 fields: seconds first), or 'off'.",
)
@click.option(
    "--sign-local/--no-sign-local",
    default=False,
    show_default=True,
    help="After crawling, drain the signing queue with a worker in this process.",
)
@click.option("--device", default=None, help="Device of the local signer worker (cuda, mps, cpu).")
@click.option("--run-now", is_flag=True, help="Also start one run right away.")
@seconds_option(
    "--header-timeout",
    minimum=0.1,
    default=15.0,
    help="Close a connection whose request headers are not complete, or that is idle, after this long.",
)
@pass_app
def serve(app: App, host, port, schedule, sign_local, device, run_now, header_timeout):
    """Serve the HTTP API and the search page; run the crawl-and-index job on a schedule."""
    schedule = None if schedule.strip().lower() in ("off", "none", "") else schedule.strip()
    if schedule:
        cron_trigger(schedule)  # fail now, not at the first fire
    from registry.api import API_THREADS

    # every API thread may hold a connection, plus the nightly run, its lease heartbeat, the crawler's
    # writer thread and a local signer's heartbeat ($CARLOS_REG_DB_POOL overrides)
    app.default_pool_size = API_THREADS + 4
    _ = app.db  # migrate before listening
    options = {
        "sign_local": sign_local,
        "device": device,
        "schedule": schedule,
        "stop": threading.Event(),
        "header_timeout": header_timeout,
    }
    asyncio.run(_serve(app, host, port, schedule, options, run_now))


@hookimpl
def register_commands(cli):
    cli.add_command(serve)
