"""``carlos-reg plugins``: what is loaded and which hooks each plugin implements."""

from __future__ import annotations

import click

from registry import hookimpl
from registry.output import emit_json, output_options, table


@click.command(name="plugins")
@output_options
def plugins_command(as_json: bool):
    """List loaded plugins (built-in and installed) and their hooks."""
    from registry.plugins import get_plugins, load_errors

    plugins = get_plugins()
    if as_json:
        emit_json({"plugins": plugins, "errors": load_errors()})
        return
    table(
        ["name", "module", "version", "built-in", "hooks"],
        [
            (
                p["name"],
                p["module"],
                p.get("version", ""),
                "yes" if p["builtin"] else "no",
                p["hooks"],
            )
            for p in plugins
        ],
    )


@click.command(name="completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str):
    """Print the shell completion script, e.g. `eval "$(carlos-reg completion bash)"` in ~/.bashrc."""
    from click.shell_completion import get_completion_class

    from registry.cli import get_cli

    cls = get_completion_class(shell)
    click.echo(cls(get_cli(), {}, "carlos-reg", "_CARLOS_REG_COMPLETE").source())


@hookimpl
def register_commands(cli):
    cli.add_command(plugins_command)
    cli.add_command(completion_command)
