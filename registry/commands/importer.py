"""``carlos-reg import carlos PARQUET``: the published CARLoS signature database."""
from __future__ import annotations

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.output import emit_json, info, output_options


@click.group(name="import")
def import_group():
    """Import signatures made elsewhere."""


@import_group.command(name="carlos")
@click.argument("parquet", type=click.Path(dir_okay=False))
@output_options
@pass_app
def import_carlos_command(app: App, parquet: str, as_json: bool):
    """Import the published CARLoS database (metrics_database.parquet), all or nothing."""
    from registry.importer import import_carlos

    counts = import_carlos(app.db, parquet)
    if as_json:
        emit_json(counts)
    else:
        info(f"imported {counts['rows']} rows under profile {counts['profile']!r}: "
             f"{counts['signatures_added']} new, {counts['signatures_updated']} updated, "
             f"{counts['unchanged']} unchanged signatures; {counts['versions_added']} new versions")


@hookimpl
def register_commands(cli):
    cli.add_command(import_group)
