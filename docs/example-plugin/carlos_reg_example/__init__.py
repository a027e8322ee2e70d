"""An example carlos-reg plugin: a CLI command, a report kind, a search retriever and a route.

- ``carlos-reg strongest``: the signed LoRAs with the highest Strength;
- ``carlos-reg report strong-by-base`` (and ``GET /api/report/strong-by-base``): strong LoRAs
  counted per base model;
- ``carlos-reg search QUERY --retriever strongest``: ranks by Strength alone (a baseline);
- ``GET /api/strongest?k=N`` on ``carlos-reg serve``: the command's JSON over HTTP.

Everything comes from ``registry.plugin_api``. SQLAlchemy and numpy are imported inside the
functions that use them, so loading the plugin keeps ``carlos-reg --help`` light.
"""

from __future__ import annotations

import html

import click

from registry.plugin_api import (
    App,
    Report,
    blocking,
    emit_json,
    hookimpl,
    output_options,
    page,
    param_int,
    pass_app,
    respond,
    table,
)


def _strongest(app: App, k: int) -> list[dict]:
    import sqlalchemy as sa

    from registry.models import Signature, SignerProfile, Version

    query = (
        sa.select(
            Signature.version_id,
            Version.name,
            SignerProfile.name,
            Signature.strength,
            Signature.consistency,
        )
        .join(Version, Version.id == Signature.version_id)
        .join(SignerProfile, SignerProfile.id == Signature.profile_id)
        .order_by(Signature.strength.desc(), Signature.version_id)
        .limit(k)
    )
    with app.db.read() as session:
        rows = session.execute(query).all()
    keys = ("version_id", "name", "profile", "strength", "consistency")
    return [dict(zip(keys, row)) for row in rows]


@click.command()
@click.option(
    "-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many LoRAs."
)
@output_options
@pass_app
def strongest(app: App, k: int, as_json: bool) -> None:
    """The signed LoRAs with the highest Strength (an example plugin command)."""
    rows = _strongest(app, k)
    if as_json:
        emit_json({"loras": rows})
        return
    table(
        ["version", "name", "profile", "strength", "consistency"],
        [[r["version_id"], r["name"], r["profile"], r["strength"], r["consistency"]] for r in rows],
    )


class StrongByBaseModel(Report):
    """Signed LoRAs per base model whose Strength reaches a threshold."""

    name = "strong-by-base"
    description = "Signed LoRAs per base model with Strength at or above --min-strength."

    def options(self) -> list[click.Parameter]:
        return [
            click.Option(
                ["--min-strength"],
                type=float,
                default=2.0,
                show_default=True,
                help="The Strength a LoRA needs to count.",
            )
        ]

    def build(
        self, app: App, *, refs: list[str], profile: str | None, min_strength: float = 2.0
    ) -> dict:
        import sqlalchemy as sa

        from registry.models import Signature, Version

        query = (
            sa.select(Version.base_model, sa.func.count())
            .join(Signature, Signature.version_id == Version.id)
            .where(Signature.strength >= min_strength)
            .group_by(Version.base_model)
            .order_by(Version.base_model)
        )
        with app.db.read() as session:
            rows = session.execute(query).all()
        return {
            "min_strength": min_strength,
            "counts": {str(base or "unknown"): count for base, count in rows},
        }

    def render_table(self, doc: dict) -> None:
        table(
            ["base model", "LoRAs"],
            list(doc["counts"].items()),
            title=f"Strength >= {doc['min_strength']}",
        )

    def render_html(self, doc: dict) -> str:
        # names come from Civitai: untrusted text, escaped before it becomes markup
        rows = "".join(
            f"<tr><td>{html.escape(base)}</td><td class=num>{count}</td></tr>"
            for base, count in doc["counts"].items()
        )
        body = (
            f"<h1>Strength &ge; {doc['min_strength']}</h1>"
            f"<table><tr><th>base model</th><th>LoRAs</th></tr>{rows}</table>"
        )
        return page("strong LoRAs by base model", body)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(strongest)


@hookimpl
def register_reports(register) -> None:
    register(StrongByBaseModel())


class StrongestRetriever:
    """Ranks the signed LoRAs of a profile by Strength, whatever the query says."""

    name = "strongest"
    description = "baseline: the strongest LoRAs, regardless of the query"

    def rank(self, engine, request):
        import numpy as np

        row = engine.profile(request.profile)
        index = engine.index(row)
        order = np.argsort(-index.strength, kind="stable")[: request.k]
        info = {"profile": row.name, "profile_hash": row.hash, "profile_id": row.id}
        return index.ids[order], index.strength[order], info


@hookimpl
def register_retrievers(register) -> None:
    register(StrongestRetriever())


@hookimpl
def register_routes(web_app, app: App) -> None:
    async def strongest_route(request):
        k = param_int(request.query, "k", 10, 1, 1000)
        return respond({"loras": await blocking(request, _strongest, app, k)})

    web_app.router.add_get("/api/strongest", strongest_route)
