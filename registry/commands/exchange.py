"""``carlos-reg export signatures``: signatures leave the registry (the published CARLoS format)."""

from __future__ import annotations

from pathlib import Path

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.output import emit_json, info, output_options


@click.group(name="export")
def export_group():
    """Export what the registry holds."""


@export_group.command(name="signatures")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--profile",
    default=None,
    help="The profile whose signatures to export [default: the imported published one for carlos, "
    "every profile for bundle].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["carlos", "bundle"]),
    default="carlos",
    show_default=True,
    help="carlos: the published metrics_database.parquet format (512-value directions); bundle: every "
    "signature with its profile record, file hashes and Civitai ids, for `import signatures`.",
)
@output_options
@pass_app
def export_signatures(app: App, out: Path, profile: str | None, fmt: str, as_json: bool):
    """Write a profile's signatures to OUT (written whole, then renamed into place)."""
    from registry.exchange import export_bundle, export_carlos

    if fmt == "bundle":
        doc = export_bundle(app.db, out, profile)
    else:
        doc = export_carlos(app.db, out, profile)
    if as_json:
        emit_json(doc)
    else:
        info(
            f"wrote {doc['signatures']} signatures of profile {doc['profile']!r} to {out} ({fmt} format)"
        )


@hookimpl
def register_commands(cli):
    cli.add_command(export_group)
