"""``carlos-reg loras`` and ``carlos-reg show REF``."""
from __future__ import annotations

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.output import emit_json, info, table
from registry.refs import REF_HELP


@click.command()
@click.option("--signed/--unsigned", default=None, help="Only signed (or only unsigned) LoRAs.")
@click.option("--base-model", metavar="NAME", help="Only this base model, e.g. 'SDXL 1.0', 'Pony'.")
@click.option("--profile", metavar="NAME", help="Signatures of this signer profile (default: the newest).")
@click.option("--limit", type=click.IntRange(min=0, max=2**62), default=100, show_default=True, help="At most N rows (0: all).")
@click.option("--offset", type=click.IntRange(min=0, max=2**62), default=0, help="Skip the first N rows.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def loras(app: App, signed, base_model, profile, limit, offset, as_json):
    """List LoRA versions in the registry."""
    from registry.profiles import find_profile
    from registry.queries import lora_rows

    with app.db.read() as session:
        profile_id = find_profile(session, profile).id if profile else None
        total, rows = lora_rows(session, signed=signed, base_model=base_model, profile_id=profile_id,
                                limit=limit or None, offset=offset)
    if as_json:
        emit_json({"total": total, "offset": offset, "count": len(rows), "loras": rows})
        return
    table(["version", "name", "base model", "strength", "consistency", "profile", "flags"],
          [(r["version_id"], r["name"], r["base_model"], r.get("strength"), r.get("consistency"), r.get("profile"),
            r.get("flags")) for r in rows])
    if total > offset + len(rows):
        info(f"{len(rows)} of {total} shown; use --limit 0 for all, or --offset")
    elif not rows:
        info("no LoRAs match" if total == 0 and (signed is not None or base_model) else
             "the registry is empty: try `carlos-reg import carlos FILE` or `carlos-reg crawl`")


@click.command(help=f"Show one LoRA in detail. REF is {REF_HELP}.")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def show(app: App, ref: str, as_json: bool):
    from registry.queries import lora_detail
    from registry.refs import resolve_ref

    with app.db.read() as session:
        detail = lora_detail(session, resolve_ref(session, ref))
    if as_json:
        emit_json(detail)
        return
    rows = [("version", detail["version_id"]), ("model", detail["model_id"]), ("name", detail["name"]),
            ("version name", detail["version_name"]), ("base model", detail["base_model"]), ("url", detail["url"]),
            ("trigger words", detail["trained_words"]), ("source", detail["source"]),
            ("gone", detail["gone_at"] or "no")]
    if "model" in detail:
        rows.append(("tags", detail["model"]["tags"]))
    for s in detail["signatures"]:
        rows.append((f"signature [{s['profile']}]",
                     f"strength {s['strength']:.4g}, consistency {s['consistency']:.4g}, {s['n_samples']} samples"
                     + ("" if s["valid"] else ", NOT VALID") + (f", flags: {', '.join(s['flags'])}" if s["flags"] else "")))
    for f in detail["files"]:
        rows.append((f"file {f['id']}", f"{f['name']} [{f['state']}]" + (f" {f['error']}" if f["error"] else "")))
    for j in detail["jobs"]:
        rows.append((f"job {j['id']} [{j['profile']}]",
                     f"{j['state']} after {j['attempts']} attempt(s)" + (f": {j['last_error']}" if j["last_error"] else "")))
    table(["field", "value"], rows, title=detail["name"])


@hookimpl
def register_commands(cli):
    cli.add_command(loras)
    cli.add_command(show)
