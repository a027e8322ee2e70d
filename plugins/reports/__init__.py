"""Built-in plugin: ``carlos-reg report KIND`` and the report hook.

Every report kind — built-in (``copyright``) or from a third-party plugin — arrives through
``register_reports`` and becomes a subcommand with the common options (REF…, ``--format``,
``--out``, ``--profile``) plus its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from registry.app import App
from registry.errors import CarlosError, UsageError
from registry.output import emit_json, info, write_file
from registry.plugin_api import Report, collect_named, hookimpl
from registry.refs import REF_COMMAND
from registry.settings import PROFILE_HELP


def get_reports() -> dict[str, Report]:
    return collect_named("register_reports", "report kind")


def _command_for(report: Report) -> click.Command:
    def callback(refs, fmt, as_json, out, profile, **options):
        app = click.get_current_context().find_object(App)
        fmt = "json" if as_json else fmt
        if fmt not in report.formats:
            raise UsageError(
                f"report {report.name} has no {fmt} format (it has {', '.join(report.formats)})"
            )
        doc = report.build(app, refs=list(refs), profile=profile, **options)
        if fmt == "json":
            doc = report.render_json(doc)
            if out:
                _write(out, _json_text(doc))
            else:
                emit_json(doc)
        elif fmt == "html":
            text = report.render_html(doc)
            if out:
                _write(out, text)
            else:
                sys.stdout.write(text)
        else:
            if out:
                raise UsageError("--out needs --format json or html")
            report.render_table(doc)

    params = [
        click.Argument(["refs"], nargs=-1),
        click.Option(
            ["--format", "fmt"],
            type=click.Choice(["table", "json", "html"]),
            default="table",
            show_default=True,
            help="Output format.",
        ),
        click.Option(["--json", "as_json"], is_flag=True, help="Same as --format json."),
        click.Option(
            ["--out"], type=click.Path(dir_okay=False), help="Write the JSON or HTML to this file."
        ),
        click.Option(["--profile"], metavar="NAME", help=PROFILE_HELP),
        *report.options(),
    ]
    return click.Command(
        report.name,
        callback=callback,
        params=params,
        help=report.description,
        context_settings=REF_COMMAND,
    )


def _json_text(doc) -> str:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        emit_json(doc)
    return buf.getvalue()


def _write(path: str, text: str) -> None:
    target = Path(path)
    try:
        write_file(target, text.encode("utf-8"))
    except OSError as exc:
        raise CarlosError(f"cannot write {path}: {exc.strerror or exc}") from None
    info(f"wrote {target}")


class _ReportGroup(click.Group):
    """Subcommands are the registered report kinds, looked up when the group runs."""

    def _reports(self):
        if not getattr(self, "_loaded", False):
            for report in get_reports().values():
                self.add_command(_command_for(report))
            self._loaded = True

    def list_commands(self, ctx):
        self._reports()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._reports()
        return super().get_command(ctx, name)


@click.group(cls=_ReportGroup)
def report():
    """Reports over the registry (copyright screening, and kinds from plugins)."""


@hookimpl
def register_commands(cli):
    cli.add_command(report)


@hookimpl
def register_reports(register):
    from plugins.reports.copyright import CopyrightReport

    register(CopyrightReport())


# options that name files on the server's disk are not taken from HTTP requests
_SERVER_PATH_OPTIONS = {"reference", "png", "out"}


def _options_from_query(report: Report, query) -> dict:
    values = {}
    ctx = click.Context(click.Command(report.name))
    for opt in report.options():
        if opt.name in _SERVER_PATH_OPTIONS:
            continue
        raw = query.get(opt.name)
        if raw is None or raw == "":
            default = opt.get_default(ctx, call=True)
            values[opt.name] = None if default is getattr(click.core, "UNSET", None) else default
            continue
        try:
            values[opt.name] = opt.type.convert(raw, opt, None)
        except click.BadParameter as exc:
            raise UsageError(f"parameter {opt.name}: {exc.message}") from None
    return values


@hookimpl
def register_routes(web_app, app):
    from aiohttp import web

    from registry.api import blocking, check_params, respond

    async def report_route(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        reports = get_reports()
        if kind not in reports:
            raise web.HTTPNotFound(
                reason=f"no report kind {kind!r}; available: {', '.join(sorted(reports))}"
            )
        report = reports[kind]
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "html") or fmt not in report.formats:
            raise UsageError("parameter format must be json or html")
        check_params(
            request.query,
            {"format", "ref", "profile"}
            | {o.name for o in report.options() if o.name not in _SERVER_PATH_OPTIONS},
        )
        options = _options_from_query(report, request.query)
        refs = request.query.getall("ref", [])

        def run():
            doc = report.build(
                app, refs=refs, profile=request.query.get("profile") or None, **options
            )
            return report.render_json(doc) if fmt == "json" else report.render_html(doc)

        result = await blocking(request, run)
        if fmt == "json":
            return respond(result)
        return web.Response(text=result, content_type="text/html")

    web_app.router.add_get("/api/report/{kind}", report_route)
