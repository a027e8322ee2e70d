"""Running a mirror app: on loopback from a background thread (tests, the demo) or in the
foreground until a signal (``carlos-reg mirror serve``)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from crawler.mirror.catalog import MirrorCatalog
from crawler.mirror.server import CATALOG, make_app

log = logging.getLogger("crawler.mirror")


class _PathOnlyAccessLogger(AbstractAccessLogger):
    """Access log without query strings (a client may put a token there)."""

    def log(self, request, response, time):
        self.logger.info(
            "%s %s %s %s %.3fs", request.remote, request.method, request.path, response.status, time
        )


class BackgroundServer:
    """Serve an aiohttp app on loopback from a daemon thread (``with`` it; ``.url`` is the base URL)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="carlos-reg-mirror")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _main(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def start(self) -> "BackgroundServer":
        if self._thread.is_alive():
            return self
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)

    def call(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the server's loop (e.g. to set an ``asyncio.Event``)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(
    root: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    public_url: str | None = None,
    announce: Callable[[str, "MirrorCatalog"], None] | None = None,
) -> None:
    """Serve a mirror until SIGINT/SIGTERM (blocking)."""
    import signal

    app = make_app(root, token=token, public_url=public_url)

    async def main() -> None:
        from registry.api import json_parse_errors

        runner = web.AppRunner(
            app, handle_signals=False, access_log=log, access_log_class=_PathOnlyAccessLogger
        )
        await runner.setup()
        json_parse_errors(runner)
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if announce:
            announce(
                f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}",
                app[CATALOG],
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
