"""``mirror serve`` and ``mirror export``: a Civitai-compatible API served from a directory, and
the registry written out in that format (docs/mirror.md). ``crawler.mirror`` loads inside them."""

from __future__ import annotations

import click

from registry.app import App, pass_app
from registry.cli_options import listen_options
from registry.errors import CarlosError
from registry.output import emit_json, info, output_options


@click.group()
def mirror():
    """A Civitai-compatible API served from a directory (see docs/mirror.md)."""


@mirror.command(name="serve")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@listen_options(port=8000, port_help="0: any free port.")
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
