"""``carlos-reg loras`` and ``carlos-reg show REF``."""
from __future__ import annotations

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.output import emit_json, info, table
from registry.refs import REF_COMMAND, REF_HELP


@click.command()
@click.option("--signed/--unsigned", default=None, help="Only signed (or only unsigned) LoRAs.")
@click.option("--base-model", metavar="NAME", help="Only this base model, e.g. 'SDXL 1.0', 'Pony'.")
@click.option("--profile", metavar="NAME", help="Signatures of this signer profile (default: the newest).")
@click.option("--nsfw/--no-nsfw", default=None,
              help="Only NSFW / no NSFW LoRAs (version nsfwLevel, else model nsfwLevel, else the model's flag).")
@click.option("--mode", type=click.Choice(["live", "archived", "takendown"], case_sensitive=False),
              help="Only LoRAs whose Civitai model is live, Archived or TakenDown (default: all, marked).")
@click.option("--limit", type=click.IntRange(min=0, max=2**62), default=100, show_default=True, help="At most N rows (0: all).")
@click.option("--offset", type=click.IntRange(min=0, max=2**62), default=0, help="Skip the first N rows.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def loras(app: App, signed, base_model, nsfw, mode, profile, limit, offset, as_json):
    """List LoRA versions in the registry."""
    from registry.profiles import find_profile
    from registry.queries import lora_rows

    with app.db.read() as session:
        profile_id = find_profile(session, profile).id if profile else None
        total, rows = lora_rows(session, signed=signed, base_model=base_model, profile_id=profile_id,
                                limit=limit or None, offset=offset, nsfw=nsfw, mode=mode)
    if as_json:
        emit_json({"total": total, "offset": offset, "count": len(rows), "loras": rows})
        return
    table(["version", "name", "base model", "strength", "consistency", "profile", "flags", "notes"],
          [(r["version_id"], r["name"], r["base_model"], r.get("strength"), r.get("consistency"), r.get("profile"),
            r.get("flags"), notes(r)) for r in rows])
    if total > offset + len(rows):
        info(f"{len(rows)} of {total} shown; use --limit 0 for all, or --offset")
    elif not rows:
        info("no LoRAs match" if total == 0 and (signed is not None or base_model) else
             "the registry is empty: try `carlos-reg import carlos FILE` or `carlos-reg crawl`")


@click.command(help=f"Show one LoRA in detail. REF is {REF_HELP}.", context_settings=REF_COMMAND)
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
            ("trigger words", " | ".join(detail["trained_words"])), ("source", detail["source"]),
            ("nsfw", "yes" if detail["nsfw"] else "no"),
            ("civitai mode", detail["mode"] or "live"),
            ("early access", ("until " + detail["early_access_ends_at"] if detail["early_access_ends_at"] else "yes")
             if detail["early_access"] else "no"),
            ("published", detail["published_at"]), ("status", detail["status"]),
            ("gone", detail["gone_at"] or "no")]
    if "model" in detail:
        rows.append(("tags", detail["model"]["tags"]))
    for s in detail["signatures"]:
        rows.append((f"signature [{s['profile']}]",
                     f"strength {s['strength']:.4g}, consistency {s['consistency']:.4g}, {s['n_samples']} samples"
                     + ("" if s["valid"] else ", NOT VALID") + (f", flags: {', '.join(s['flags'])}" if s["flags"] else "")))
    for f in detail["files"]:
        rows.append((f"file {f['id']}", f"{f['name']} [{f['state']}]" + (f" {f['error']}" if f["error"] else "")))
        if f["hashes"]:
            rows.append(("  hashes", ", ".join(f"{k} {v}" for k, v in f["hashes"].items())))
    for j in detail["jobs"]:
        rows.append((f"job {j['id']} [{j['profile']}]",
                     f"{j['state']} after {j['attempts']} attempt(s)" + (f": {j['last_error']}" if j["last_error"] else "")))
    table(["field", "value"], rows, title=detail["name"])


def notes(r: dict) -> str:
    """What a listing row must not hide: Civitai mode, early access, NSFW, gone."""
    out = []
    if r.get("mode"):
        out.append(r["mode"])
    if r.get("early_access"):
        out.append("early access" + (f" until {r['early_access_ends_at'][:10]}" if r.get("early_access_ends_at") else ""))
    if r.get("nsfw"):
        out.append("nsfw")
    if r.get("gone"):
        out.append("gone")
    return ", ".join(out)


@hookimpl
def register_commands(cli):
    cli.add_command(loras)
    cli.add_command(show)
