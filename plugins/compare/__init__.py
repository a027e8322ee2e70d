"""Built-in plugin: ``carlos-reg compare`` — what a LoRA's metadata claims vs what it measurably does.

The claim is the LoRA's trigger words, name and tags, cleaned of version and base-model noise
(``claims.py``). Its reciprocal query vector (the search plugin's) is compared with the LoRA's
Direction: the *agreement* is their cosine, and the *claim rank* is where the LoRA lands among
all signed LoRAs for its own claim. A claim is *not supported* when the agreement is not
positive or the rank is beyond ``--k``. The *strongest effect* is the vocabulary term
(``signer/claim_vocabulary.json``) whose query vector the Direction is closest to; it is *undeclared* when
the claim does not mention it.
"""

from __future__ import annotations

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.cli_options import profile_option
from registry.output import emit_json, info, output_options, table
from registry.refs import REF_COMMAND


@click.command(context_settings=REF_COMMAND)
@click.argument("refs", nargs=-1)
@profile_option
@click.option(
    "-k",
    "k",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="A claim is supported only if the LoRA ranks within the top k for its own claim.",
)
@click.option("--worst", type=click.IntRange(1), help="Only the N worst offenders.")
@output_options
@pass_app
def compare(app: App, refs, profile, k, worst, as_json):
    """Claims vs behavior: does each LoRA do what its name, tags and trigger words say? Worst first."""
    from registry.refs import resolve_ref
    from signer.claim_check import ClaimChecker

    checker = ClaimChecker(app, profile, k)
    ids = None
    if refs:
        with app.db.read() as session:
            ids = sorted({resolve_ref(session, r) for r in refs})
    results = checker.check(ids)
    shown = results[:worst] if worst else results
    doc = {
        "profile": checker.row.name,
        "profile_hash": checker.row.hash,
        "k": k,
        "checked": len(results),
        "not_supported": sum(1 for r in results if r["supported"] is False),
        "results": shown,
    }
    if as_json:
        emit_json(doc)
        return
    table(
        [
            "version",
            "name",
            "claim",
            "agreement",
            "claim rank",
            "supported",
            "strongest effect",
            "undeclared",
        ],
        [
            (
                r["version_id"],
                r["name"],
                r["claim"],
                r["agreement"],
                r["claim_rank"],
                {True: "yes", False: "NO", None: "—"}[r["supported"]],
                r["strongest_effect"]["term"],
                (r["undeclared_effect"] or {}).get("term"),
            )
            for r in shown
        ],
        title=f"claims vs behavior — profile {checker.row.name}",
    )
    info(
        f"{doc['not_supported']} of {doc['checked']} claims not supported (agreement ≤ 0 or rank beyond {k})"
    )


@hookimpl
def register_commands(cli):
    cli.add_command(compare)


@hookimpl
def register_routes(web_app, app):
    from aiohttp import web

    from registry.api import blocking, check_params, param_int, respond
    from registry.refs import resolve_ref
    from signer.claim_check import ClaimChecker

    checkers: dict = {}

    async def compare_route(request: web.Request) -> web.Response:
        check_params(request.query, ("k", "profile"))
        k = param_int(request.query, "k", 20, 1, 10_000)
        profile = request.query.get("profile") or None

        def run():
            key = (profile, k)
            if key not in checkers:  # keeps the CLIP model and vocabulary vectors warm
                checkers[key] = ClaimChecker(app, profile, k)
            checker = checkers[key]
            checker.index = checker.engine.index(checker.row)
            with app.db.read() as session:
                vid = resolve_ref(session, request.match_info["ref"])
            return {
                "profile": checker.row.name,
                "profile_hash": checker.row.hash,
                "k": k,
                "results": checker.check([vid]),
            }

        return respond(await blocking(request, run))

    web_app.router.add_get("/api/compare/{ref}", compare_route)
