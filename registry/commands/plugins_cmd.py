"""``carlos-reg plugins``: what is loaded and which hooks each plugin implements."""
from __future__ import annotations

import click

from registry import hookimpl
from registry.output import emit_json, table


@click.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def plugins_command(as_json: bool):
    """List loaded plugins (built-in and installed) and their hooks."""
    from registry.plugins import get_plugins, load_errors

    plugins = get_plugins()
    if as_json:
        emit_json({"plugins": plugins, "errors": load_errors()})
        return
    table(["name", "module", "built-in", "hooks"],
          [(p["name"], p["module"], "yes" if p["builtin"] else "no", p["hooks"]) for p in plugins])


@hookimpl
def register_commands(cli):
    cli.add_command(plugins_command)
