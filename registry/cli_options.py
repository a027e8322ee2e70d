"""Click options that several commands declare alike, defined once so that their names, types
and ``--help`` lines stay in step (``registry.output.output_options`` is the ``--json`` one).

Only click and ``registry.settings`` are imported: ``carlos-reg --help`` stays light.
"""

from __future__ import annotations

import click

from registry.settings import PROFILE_HELP

# ``--profile NAME`` of a command that reads or writes one profile's signatures.
profile_option = click.option("--profile", metavar="NAME", help=PROFILE_HELP)


def listen_options(port: int, port_help: str):
    """``--host`` (default 127.0.0.1) and ``--port`` (0-65535, default ``port``) of a server."""

    def decorate(func):
        func = click.option(
            "--port",
            type=click.IntRange(0, 65535),
            default=port,
            show_default=True,
            help=port_help,
        )(func)
        return click.option(
            "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
        )(func)

    return decorate


def limit_option(
    help: str,
    *,
    minimum: int = 0,
    maximum: int | None = None,
    default: int = 20,
    metavar: str | None = None,
):
    """``--limit``: how many rows (or items) a command shows, at least ``minimum``."""
    return click.option(
        "--limit",
        type=click.IntRange(min=minimum, max=maximum),
        default=default,
        show_default=True,
        metavar=metavar,
        help=help,
    )


def seconds_option(
    name: str, *, minimum: float, help: str, default: float | None = None, metavar: str = "SECONDS"
):
    """A duration in seconds (a float of at least ``minimum``); its default, if any, is shown."""
    shown = {} if default is None else {"default": default, "show_default": True}
    return click.option(
        name, type=click.FloatRange(min=minimum), metavar=metavar, help=help, **shown
    )
