"""The public plugin API of carlos-reg: everything a plugin needs, importable from one module.

``from registry.plugin_api import hookimpl, Report, page`` is all a report plugin imports; the
hooks themselves are specified in ``registry.hookspecs`` and documented in docs/plugins.md.
Built-in plugins use this module exactly as third-party ones do.
"""

from __future__ import annotations

import html

import click

from registry.app import App, pass_app
from registry.errors import CarlosError, NotFound, UsageError
from registry.hookspecs import hookimpl
from registry.output import emit_json, info, output_options, table
from registry.plugins import collect, collect_named

__all__ = [
    "App",
    "CarlosError",
    "NotFound",
    "Report",
    "UsageError",
    "blocking",
    "collect",
    "collect_named",
    "emit_json",
    "hookimpl",
    "info",
    "output_options",
    "page",
    "param_int",
    "pass_app",
    "respond",
    "table",
]


# HTTP helpers for ``register_routes``: aiohttp loads with the first route, not with the CLI.


async def blocking(request, fn, *args, **kwargs):
    """Run a blocking function (database, models) on the API's worker threads."""
    from registry import api

    return await api.blocking(request, fn, *args, **kwargs)


def respond(doc, status: int = 200):
    """A strict-JSON ``aiohttp`` response (NaN and infinities become null), like ``--json``."""
    from registry import api

    return api.respond(doc, status)


def param_int(
    query, name: str, default: int | None = None, lo: int | None = None, hi: int | None = None
) -> int | None:
    """An integer query parameter within ``lo..hi``; a bad value answers 400."""
    from registry import api

    return api.param_int(query, name, default, lo, hi)


class Report:
    """Base class of report kinds."""

    name: str = ""
    description: str = ""
    formats: tuple[str, ...] = ("table", "json", "html")

    def options(self) -> list[click.Parameter]:
        return []

    def build(self, app: App, *, refs: list[str], profile: str | None, **options) -> dict:
        raise NotImplementedError

    def render_table(self, doc: dict) -> None:
        emit_json(self.render_json(doc))

    def render_json(self, doc: dict) -> dict:
        return doc

    def render_html(self, doc: dict) -> str:
        body = f"<pre>{html.escape(str(doc))}</pre>"
        return page(f"carlos-reg report: {self.name}", body)


def page(title: str, body: str, style: str = "") -> str:
    """A self-contained HTML page (no external resources)."""
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{BASE_CSS}{style}</style>"
        f"</head><body>{body}</body></html>\n"
    )


BASE_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1b1f24}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;
text-align:left;vertical-align:top}th{background:#f4f5f7;position:sticky;top:0}td.num{text-align:right;
font-variant-numeric:tabular-nums}.tier-high{color:#b00020;font-weight:600}.tier-elevated{color:#b35c00;
font-weight:600}.tier-low{color:#2e7d32}.tier-unreliable{color:#6b6b6b;font-style:italic}.muted{color:#666}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.6rem 1rem}code{background:#f4f5f7;padding:0 .25rem}
img.plot{max-width:100%;height:auto;border:1px solid #eee}
"""
