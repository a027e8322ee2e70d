"""``carlos-reg import carlos PARQUET``: the published CARLoS signature database."""

from __future__ import annotations

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.errors import UsageError
from registry.output import emit_json, info, output_options


@click.group(name="import")
def import_group():
    """Import signatures made elsewhere."""


@import_group.command(name="carlos")
@click.argument("parquet", type=click.Path(dir_okay=False))
@click.option(
    "--hydrate",
    is_flag=True,
    help="Then fetch what the file lacks (base model, trigger words, tags, descriptions, files and "
    "hashes) from Civitai by model id: `carlos-reg crawl --imported --no-download`.",
)
@output_options
@pass_app
@click.pass_context
def import_carlos_command(ctx: click.Context, app: App, parquet: str, hydrate: bool, as_json: bool):
    """Import the published CARLoS database (metrics_database.parquet), all or nothing.

    \b
    The file is the reference implementation's published signature database (740 SDXL LoRAs from
    Civitai); it has names, ids and signatures but no base models or trigger words: --hydrate fills
    those in from Civitai (CIVITAI_BASE_URL, CIVITAI_API_KEY) so --base-model filters and `compare`
    work on these rows.
    """
    from registry.importer import import_carlos

    counts = import_carlos(app.db, parquet)
    if as_json and not hydrate:
        emit_json(counts)
    else:
        info(
            f"imported {counts['rows']} rows under profile {counts['profile']!r}: "
            f"{counts['signatures_added']} new, {counts['signatures_updated']} updated, "
            f"{counts['unchanged']} unchanged signatures; {counts['versions_added']} new versions"
        )
    if hydrate:
        # the crawler plugs its command into the CLI; the core reaches it by name, never by import
        crawl = ctx.find_root().command.get_command(ctx, "crawl")
        if crawl is None:
            raise UsageError(
                "--hydrate needs the crawler's `crawl` command, which is not installed"
            )
        ctx.invoke(crawl, imported=True, download=False, as_json=as_json)


@import_group.command(name="signatures")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option(
    "--replace",
    is_flag=True,
    help="Overwrite a different signature already held for a file and profile.",
)
@output_options
@pass_app
def import_signatures_command(app: App, bundle: str, replace: bool, as_json: bool):
    """Import a signature bundle (`export signatures --format bundle`): validated whole, one transaction."""
    from registry.bundle_import import import_bundle

    counts = import_bundle(app.db, bundle, replace=replace)
    if as_json:
        emit_json(counts)
        return
    info(
        f"{counts['rows']} signatures in the bundle: {counts['added']} added, {counts['replaced']} replaced, "
        f"{counts['unchanged']} unchanged, {counts['conflicts']} conflicts kept as they were"
        + (" (--replace overwrites them)" if counts["conflicts"] else "")
        + f"; {counts['versions_added']} new versions"
    )
    for c in counts["conflict_list"][:20]:
        info(
            f"conflict: version {c['version_id']} under profile {c['profile']!r} already has a different signature"
        )


@hookimpl
def register_commands(cli):
    cli.add_command(import_group)
