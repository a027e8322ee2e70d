"""Built-in plugin: ``carlos-reg demo`` — the whole system, offline, on tiny local models.

It writes a catalog of a dozen LoRAs with deliberately different effects (strong, subtle, none, a
near-duplicate re-upload, a text-encoder LoRA, a Pony LoRA, an SD 1.5 LoRA the crawler must drop,
and a pickle, a LoHa and a corrupt file) in the mirror format, serves it on loopback, crawls it,
signs with the tiny profile, and shows search, similar, compare and the copyright report — each
step through the same commands a user types. Random weights make every ranking meaningless;
the mechanics (downloads, verification, failures and their reasons, queue, signatures, caches,
duplicate detection) are real. The catalog itself is ``plugins.demo.catalog``.
"""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

import click
from rich.text import Text

from registry import hookimpl
from registry.errors import CarlosError
from registry.output import clean, err, info, say
from registry.settings import Environment, environment, set_library_defaults, use_environment
from registry.states import FileState, JobState

MARKER = ".carlos-reg-demo"


def _explain_failures(home: Path) -> None:
    import sqlalchemy as sa

    from registry.app import App
    from registry.models import File, Model, SignJob, Version
    from registry.output import table
    from registry.settings import Settings

    app = App(Settings.load(home=home))
    with app.db.read() as s:
        files = s.execute(
            sa.select(Model.name, File.state, File.error)
            .join(Version, Version.id == File.version_id)
            .join(Model, Model.id == Version.model_id)
            .where(File.state != FileState.VERIFIED)
        ).all()
        jobs = s.execute(
            sa.select(Model.name, SignJob.last_error)
            .join(Version, Version.id == SignJob.version_id)
            .join(Model, Model.id == Version.model_id)
            .where(SignJob.state == JobState.DEAD)
        ).all()
    rows = [(name, f"file {state}", error or "") for name, state, error in files]
    rows += [(name, "signing failed", error or "") for name, error in jobs]
    table(["LoRA", "what", "why"], rows, title="rejected on the way")
    info(
        "The SD 1.5 LoRA never entered the registry: the crawler keeps only SDXL-architecture LoRAs, "
        "whatever the server returns."
    )
    app.close()


def _step(n: int, title: str, what: str) -> None:
    err.rule(f"[bold]{n}. {title}")
    err.print(what, highlight=False)


class _Runner:
    """Runs carlos-reg commands in this process against the demo's data dir."""

    def __init__(self, home: Path):
        self.home = home

    def __call__(self, *args: str, allow_fail: bool = False) -> int:
        from registry.cli import invoke

        say(f"$ carlos-reg {shlex.join(args)}")  # copy-pasteable: quoted, one unwrapped line
        try:
            code = invoke(["--home", str(self.home), *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        except CarlosError as exc:
            info(f"Error: {exc}")
            code = exc.exit_code
        if code and not allow_fail:
            raise CarlosError(f"demo step `carlos-reg {shlex.join(args)}` failed (exit {code})")
        return code


def _fresh_dir(directory: str) -> Path:
    root = Path(directory).resolve()
    if root.exists():
        if not (root / MARKER).exists() and any(root.iterdir()):
            raise CarlosError(f"{root} exists and is not a demo directory; choose another --dir")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by carlos-reg demo; safe to delete\n")
    (root / "home").mkdir()
    return root


def _demo_environment(root: Path) -> Environment:
    """The demo's settings: the tiny profile, its own models, no registry or token of the user's."""
    set_library_defaults(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return environment().with_values(
        CARLOS_REG_PROFILE="tiny",
        CARLOS_REG_MODELS=str(root / "models"),
        CARLOS_REG_DB=None,
        CIVITAI_API_KEY=None,
    )


def _build_and_crawl(run: _Runner, root: Path, env: Environment) -> None:
    _step(
        1,
        "Tiny models",
        "An SDXL-architecture pipeline and a CLIP model with random weights, built from small "
        "configs and saved, then loaded back through the same from_pretrained path as real weights.",
    )
    from signer.tiny import ensure_tiny_sdxl

    ensure_tiny_sdxl(root / "models")
    info(f"built in {root / 'models'}")

    _step(
        2,
        "A Civitai-compatible mirror",
        "13 LoRAs in the mirror format: strong, subtle, zero-effect, a "
        "near-duplicate re-upload, a text-encoder LoRA, a Pony LoRA, plus an SD 1.5 LoRA (not SDXL: dropped), a "
        "pickle .pt (never downloaded as usable), a LoHa (diffusers cannot load it) and a truncated file.",
    )
    from crawler.mirror import BackgroundServer, make_app
    from plugins.demo.catalog import write_demo_catalog

    write_demo_catalog(root / "mirror", root / "work")
    with (
        BackgroundServer(make_app(root / "mirror")) as server,
        use_environment(env.with_values(CIVITAI_BASE_URL=server.url)),
    ):
        info(f"serving {root / 'mirror'} at {server.url}")

        _step(
            3,
            "Crawl",
            "Listing with cursor pagination, SDXL LoRAs only, files downloaded with SHA256 "
            "verification; every verified file is queued for signing with the default profile (tiny).",
        )
        run("crawl", "--concurrency", "2", allow_fail=True)
        run("crawls", "--limit", "1")


def _sign_and_query(run: _Runner, root: Path) -> Path:
    """Steps 4-10; returns the HTML report's path."""
    _step(
        4,
        "Sign",
        "A worker claims jobs with a lease: first the profile's base branch (computed once), then each "
        "LoRA (paired generations with and without it, CLIP-space differences → Direction, Strength, Consistency). "
        "Bad files fail their job with the reason; the worker goes on.",
    )
    run("signer", "work", "--once", "--device", "cpu", allow_fail=True)
    run("signer", "status")

    _step(
        5,
        "What failed, and why",
        "Nothing bad is lost or silent: each rejected file keeps its reason.",
    )
    _explain_failures(run.home)

    _step(
        6,
        "The registry",
        "What was crawled and signed (zero-effect LoRAs get Strength 0 and a no_effect flag).",
    )
    run("loras")

    _step(
        7,
        "Search by behavior",
        "The query's CLIP-text shift over the profile's prompts, against each LoRA's "
        "Direction. The second identical query comes from the cache without loading a model.",
    )
    run("search", "ink wash painting", "-k", "5", "--no-filter")
    run("search", "ink wash painting", "-k", "3", "--no-filter")
    run("search", "watercolor", "-k", "5", "--retriever", "metadata", allow_fail=True)

    _step(
        8,
        "Similar LoRAs",
        "Nearest Directions: the re-upload of 'Ink Wash Painting' shows up as a near duplicate.",
    )
    run("similar", "Ink Wash Painting", "-k", "3")

    _step(
        9,
        "Claims vs behavior",
        "Does each LoRA do what its name, tags and trigger words say? Worst first.",
    )
    run("compare", "--worst", "5")

    _step(
        10,
        "Copyright-risk screening",
        "Strength (substantiality) and Consistency (volition) against the registry's "
        "own distribution, with quality flags; also written as a self-contained HTML report.",
    )
    html = root / "copyright-report.html"
    run("report", "copyright", "--min-samples", "16", "--limit", "12")
    run("report", "copyright", "--min-samples", "16", "--format", "html", "--out", str(html))
    return html


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default="carlos-demo",
    show_default=True,
    help="Fresh data dir for the demo (recreated on each run; the registry in --home is not touched).",
)
def demo(directory: str):
    """Offline end-to-end run on tiny local models: crawl a mirror, sign, search, compare, report."""
    started = time.monotonic()
    root = _fresh_dir(directory)
    home = root / "home"
    run = _Runner(home)
    err.print(
        Text.assemble(("carlos-reg demo", "bold"), f" — data in {clean(root)}"), highlight=False
    )
    err.print(
        "Everything runs offline on tiny random-weight models. The mechanics are real; the rankings are "
        "[bold]meaningless[/bold] (random weights cannot 'mean' watercolor).",
        highlight=False,
    )
    env = _demo_environment(root)
    with use_environment(env):
        _build_and_crawl(run, root, env)
        html = _sign_and_query(run, root)

    err.rule("[bold]Done")
    err.print(
        f"Finished in {time.monotonic() - started:.0f} s. Open {html} in a browser; the registry is "
        f"{home / 'registry.db'} (try: carlos-reg --home {home} loras; or see the search page, the LoRA pages "
        f"with their before/after images and the report: CARLOS_REG_MODELS={root / 'models'} carlos-reg --home {home} "
        "serve).\n\n"
        "Real weights on a GPU (see the README):\n"
        "  export CIVITAI_API_KEY=...            # your Civitai token\n"
        "  carlos-reg crawl --max-models 50      # SDXL LoRAs from civitai.com\n"
        "  carlos-reg signer work --device cuda  # paper profile: SDXL base 1.0 + CLIP ViT-B/32\n"
        "  carlos-reg search 'watercolor painting'\n"
        "Or start from the published signatures: carlos-reg import carlos metrics_database.parquet",
        highlight=False,
    )


@hookimpl
def register_commands(cli):
    cli.add_command(demo)
