"""The CLI root. It defines only the global options; every command arrives through the
``register_commands`` hook, built-ins included."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from registry import __version__
from registry.app import App
from registry.errors import CarlosError, first_line
from registry.output import clean
from registry.settings import Settings

_state = {"verbose": 0, "registered": False}


PROJECT_LOGGERS = ("registry", "crawler", "signer", "plugins", "migrations")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    invoke_without_command=True,
)
@click.option(
    "--db",
    "db_url",
    metavar="URL",
    help="Registry database URL [env CARLOS_REG_DB; default: SQLite file in the data dir].",
)
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="Data dir [env CARLOS_REG_HOME]; an explicit --home must exist unless --create is given.",
)
@click.option("--create", is_flag=True, help="Create the --home data dir if it does not exist.")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="-v: this project's logs and tracebacks on errors; -vv: every library's too.",
)
@click.version_option(__version__, prog_name="carlos-reg")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, home: str | None, create: bool, verbose: int):
    """carlos-reg: a registry of SDXL LoRAs that knows what each LoRA actually does.

    \b
    Getting started:
      carlos-reg demo                       # offline end-to-end run on tiny models
      carlos-reg import carlos FILE.parquet # the published CARLoS signatures
      carlos-reg loras --signed             # what the registry holds
      carlos-reg show civitai:MODEL@VERSION # one LoRA in detail
    """
    if ctx.invoked_subcommand is None:  # bare `carlos-reg`: the help, and success
        click.echo(ctx.get_help())
        ctx.exit(0)
    _state["verbose"] = verbose
    from registry.output import CleanFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        CleanFormatter("%(levelname)s %(name)s: %(message)s")
    )  # logged values are untrusted
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.WARNING, handlers=[handler]
    )
    if verbose == 1:
        for name in PROJECT_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    if home is not None and not create and not Path(home).expanduser().is_dir():
        from registry.errors import UsageError

        raise UsageError(
            f"data dir {home} does not exist: check the path, or add --create to start a new registry there"
        )
    app = App(Settings.load(home=home, db=db_url, verbose=verbose))
    ctx.obj = app
    ctx.call_on_close(app.close)


def get_cli() -> click.Group:
    """The root group with every plugin's commands registered (once)."""
    if not _state["registered"]:
        from registry.plugins import load_plugins, pm

        load_plugins()
        pm.hook.register_commands(cli=cli)
        _state["registered"] = True
    return cli


def invoke(argv: list[str] | None) -> int:
    """Run the CLI without click's standalone handling; errors propagate, the exit code is returned.

    Without standalone mode click turns ``ctx.exit(n)`` into a return value instead of raising, so
    it is read back here (command callbacks return None; an int can only be such an exit code).
    """
    try:
        code = get_cli().main(args=argv, prog_name="carlos-reg", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = invoke(argv)
        if code:
            sys.exit(code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except CarlosError as exc:
        if _state["verbose"]:
            import traceback

            traceback.print_exc()
        click.echo(f"Error: {clean(exc)}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # an unexpected failure: one line, the traceback only with -v
        if _state["verbose"]:
            raise
        first = first_line(exc)
        click.echo(
            f"Error: {type(exc).__name__}: {clean(first)} (run with -v for the traceback)", err=True
        )
        sys.exit(1)
