"""Built-in plugin: behavior search (`search`) and nearest LoRAs (`similar`)."""

from __future__ import annotations

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.cli_options import profile_option
from registry.output import emit_json, info, output_options, table
from registry.refs import REF_COMMAND, REF_HELP


@click.command()
@click.argument("query", required=False)
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="An example image of the look to find (repeatable; alone or with QUERY).",
)
@click.option("-k", "k", type=int, default=10, show_default=True, help="How many results.")
@profile_option
@click.option(
    "--no-filter", is_flag=True, help="Keep LoRAs that are too strong or too inconsistent."
)
@click.option(
    "--max-strength",
    type=float,
    metavar="X",
    help="Drop LoRAs with Strength above X (default: the profile's).",
)
@click.option(
    "--min-consistency",
    type=float,
    metavar="Y",
    help="Drop LoRAs with Consistency below Y (default: the profile's).",
)
@click.option("--base-model", metavar="NAME", help="Only LoRAs for this base model.")
@click.option(
    "--nsfw/--no-nsfw",
    default=None,
    help="Only NSFW LoRAs / no NSFW LoRAs (default: both). NSFW: the version's nsfwLevel has R/X/XXX, "
    "else the model's nsfwLevel, else the model's nsfw flag.",
)
@click.option(
    "--include-archived",
    is_flag=True,
    help="Also LoRAs whose Civitai model is Archived or TakenDown (left out by default).",
)
@click.option(
    "--retriever",
    default="carlos",
    show_default=True,
    help="carlos (behavior) or another registered retriever, e.g. metadata.",
)
@output_options
@pass_app
def search(
    app: App,
    query,
    images,
    k,
    profile,
    no_filter,
    max_strength,
    min_consistency,
    base_model,
    nsfw,
    include_archived,
    retriever,
    as_json,
):
    """Find LoRAs by what they do: words (QUERY), example images (--image), or both."""
    from signer.search import SearchEngine, SearchRequest

    request = SearchRequest(
        text=query,
        images=list(images),
        k=k,
        profile=profile,
        apply_filters=not no_filter,
        max_strength=max_strength,
        min_consistency=min_consistency,
        base_model=base_model,
        nsfw=nsfw,
        include_archived=include_archived,
        retriever=retriever,
    )
    doc = SearchEngine(app).search(request)
    _note_approximate(doc)
    if as_json:
        emit_json(doc)
        return
    _results_table(doc)
    _explain_filters(doc)


def _note_approximate(doc: dict) -> None:
    qp = doc.get("query_prompts") or {}
    if qp.get("approximate"):
        info(
            f"approximate: the query used {qp['count']} prompts of {qp['source']!r}, not the query prompts the "
            f"signatures' profile names (for the published signatures: set CARLOS_REG_CARLOS_PROMPTS to the "
            f"reference's generative_prompts.py)"
        )


def _results_table(doc: dict) -> None:
    table(
        [
            "rank",
            "score",
            "strength",
            "consistency",
            "name",
            "version",
            "base model",
            "trigger words",
            "url",
        ],
        [
            (
                r["rank"],
                r["score"],
                r.get("strength"),
                r.get("consistency"),
                r["name"],
                r["version_id"],
                r["base_model"],
                " | ".join(r["trained_words"]),
                r["url"],
            )
            for r in doc["results"]
        ],
        title=f"{doc['query']['text'] or 'image query'} — "
        + (
            f"profile {doc['profile']}"
            if doc.get("profile")
            else f"retriever {doc['query']['retriever']}"
        ),
    )


def _explain_filters(doc: dict) -> None:
    dropped = {k: v for k, v in (doc.get("filtered") or {}).items() if v}
    if dropped:
        hint = (
            " (--no-filter keeps the too strong / too inconsistent ones)"
            if {"strength_above_max", "consistency_below_min"} & set(dropped)
            else ""
        )
        info(
            "filtered out: "
            + ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in dropped.items())
            + hint
        )
    if (doc.get("query") or {}).get("cached"):
        info("query vector from the cache (no model loaded)")
    for item in doc.get("filtered_from_top") or []:
        info(
            f"  would have ranked (score {item['score']:.3f}): version {item['version_id']} — "
            + "; ".join(item["reasons"])
        )


@click.command(
    help=f"Nearest LoRAs to REF by Direction (near-duplicates, derivatives). REF is {REF_HELP}.",
    context_settings=REF_COMMAND,
)
@click.argument("ref")
@click.option("-k", "k", type=int, default=10, show_default=True, help="How many results.")
@profile_option
@output_options
@pass_app
def similar(app: App, ref, k, profile, as_json):
    from signer.search import SearchEngine

    doc = SearchEngine(app).similar(ref, k=k, profile=profile)
    if as_json:
        emit_json(doc)
        return
    table(
        ["rank", "score", "duplicate", "strength", "consistency", "name", "version", "url"],
        [
            (
                r["rank"],
                r["score"],
                r["duplicate"] or "",
                r.get("strength"),
                r.get("consistency"),
                r["name"],
                r["version_id"],
                r["url"],
            )
            for r in doc["results"]
        ],
        title=f"similar to {doc['target']['name']} ({doc['target']['version_id']}) — profile {doc['profile']}",
    )
    if doc["exact_duplicates"]:
        info(
            f"exact duplicates: {', '.join(map(str, doc['exact_duplicates']))} "
            "(the same weights, or degenerate output such as black images)"
        )


@hookimpl
def register_commands(cli):
    cli.add_command(search)
    cli.add_command(similar)


@hookimpl
def register_retrievers(register):
    from signer.search import CarlosRetriever

    register(CarlosRetriever())


@hookimpl
def register_routes(web_app, app):
    from plugins.search.routes import add_routes

    add_routes(web_app, app)
