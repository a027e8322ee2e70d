"""``carlos-reg db upgrade|downgrade|current``: schema migrations."""

from __future__ import annotations

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.output import emit_json, info, output_options


@click.group(name="db")
def db_group():
    """Schema migrations (other commands upgrade an empty or older database themselves)."""


@db_group.command()
@click.argument("revision", default="head")
@pass_app
def upgrade(app: App, revision: str):
    """Upgrade the registry schema to REVISION (default: head)."""
    from registry.migrate import current_revisions
    from registry.migrate import upgrade as do_upgrade

    before = current_revisions(app.raw_db)
    do_upgrade(app.raw_db, revision)
    after = current_revisions(app.raw_db)
    info(
        f"schema: {_fmt(before)} → {_fmt(after)}"
        if before != after
        else f"schema already at {_fmt(after)}"
    )


@db_group.command()
@click.argument("revision")
@pass_app
def downgrade(app: App, revision: str):
    """Downgrade the registry schema to REVISION ('base' drops every table)."""
    from registry.migrate import current_revisions
    from registry.migrate import downgrade as do_downgrade

    before = current_revisions(app.raw_db)
    do_downgrade(app.raw_db, revision)
    info(f"schema: {_fmt(before)} → {_fmt(current_revisions(app.raw_db))}")


@db_group.command()
@output_options
@pass_app
def current(app: App, as_json: bool):
    """Show the schema revision of the registry and of this code."""
    from registry.db import redact_url
    from registry.migrate import current_revisions, head_revision

    revs = current_revisions(app.raw_db)
    head = head_revision()
    doc = {
        "database": redact_url(app.settings.db_url),
        "current": list(revs),
        "head": head,
        "up_to_date": revs == (head,),
    }
    if as_json:
        emit_json(doc)
    else:
        click.echo(
            f"{doc['database']}: {_fmt(revs)} (code head {head}{', up to date' if doc['up_to_date'] else ''})"
        )


def _fmt(revs) -> str:
    return ", ".join(revs) if revs else "empty"


@hookimpl
def register_commands(cli):
    cli.add_command(db_group)
