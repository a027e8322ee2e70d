"""``carlos-reg loras`` and ``carlos-reg show REF``."""

from __future__ import annotations

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.cli_options import limit_option, profile_option
from registry.output import emit_json, info, output_options, table
from registry.refs import REF_COMMAND, REF_HELP
from registry.sorts import SORTS


@click.command()
@click.option("--signed/--unsigned", default=None, help="Only signed (or only unsigned) LoRAs.")
@click.option("--base-model", metavar="NAME", help="Only this base model, e.g. 'SDXL 1.0', 'Pony'.")
@profile_option
@click.option(
    "--query", "-q", metavar="TEXT", help="Only LoRAs whose name contains TEXT (any case)."
)
@click.option(
    "--sort",
    type=click.Choice(SORTS),
    default="version",
    show_default=True,
    help="Row order: strength/consistency/downloads/newest go highest first, unsigned rows last.",
)
@click.option(
    "--nsfw/--no-nsfw",
    default=None,
    help="Only NSFW / no NSFW LoRAs (version nsfwLevel, else model nsfwLevel, else the model's flag).",
)
@click.option(
    "--mode",
    type=click.Choice(["live", "archived", "takendown"], case_sensitive=False),
    help="Only LoRAs whose Civitai model is live, Archived or TakenDown (default: all, marked).",
)
@limit_option("At most N rows (0: all).", maximum=2**62, default=100)
@click.option(
    "--offset", type=click.IntRange(min=0, max=2**62), default=0, help="Skip the first N rows."
)
@output_options
@pass_app
def loras(app: App, signed, base_model, nsfw, mode, profile, query, sort, limit, offset, as_json):
    """List LoRA versions in the registry, with the signatures of one profile.

    \b
    Unsigned rows say why in the notes: queued, signing, ready (a verified file not queued
    yet), downloading, deferred (early access), failed or unsignable (with the reason).
    """
    from registry.queries import lora_rows

    with app.db.read() as session:
        row = _listing_profile(session, app, profile)
        total, rows = lora_rows(
            session,
            signed=signed,
            base_model=base_model,
            profile_id=row and row.id,
            limit=limit or None,
            offset=offset,
            nsfw=nsfw,
            mode=mode,
            query=query,
            sort=sort,
        )
    if as_json:
        emit_json(
            {
                "total": total,
                "offset": offset,
                "count": len(rows),
                "profile": row and row.name,
                "loras": rows,
            }
        )
        return
    filtered = signed is not None or base_model or query or nsfw is not None or mode
    _print_listing(rows, total, offset, row and row.name, bool(filtered))


def _listing_profile(session, app: App, profile: str | None):
    """The profile whose signatures a listing shows; None when nothing is signed and none was named."""
    from registry.errors import NotFound
    from registry.profiles import default_profile

    try:
        return default_profile(session, app.settings.default_profile, profile)
    except NotFound:
        if profile:
            raise
        return None  # nothing signed yet: list everything as unsigned


def _print_listing(rows: list, total: int, offset: int, profile: str | None, filtered: bool):
    table(
        ["ref", "name", "base model", "strength", "consistency", "flags", "notes"],
        [
            (
                r["ref"],
                r["name"],
                r["base_model"],
                r.get("strength"),
                r.get("consistency"),
                r.get("flags"),
                notes(r),
            )
            for r in rows
        ],
        title=f"LoRAs — signatures of profile {profile}" if profile else None,
    )
    if total > offset + len(rows):
        info(f"{len(rows)} of {total} shown; use --limit 0 for all, or --offset")
    elif not rows:
        info(
            "no LoRAs match"
            if total == 0 and filtered
            else "the registry is empty: try `carlos-reg import carlos FILE` or `carlos-reg crawl`"
        )


@click.command(help=f"Show one LoRA in detail. REF is {REF_HELP}.", context_settings=REF_COMMAND)
@click.argument("ref")
@output_options
@pass_app
def show(app: App, ref: str, as_json: bool):
    from registry.lora_detail import lora_detail
    from registry.refs import resolve_ref

    with app.db.read() as session:
        detail = lora_detail(session, resolve_ref(session, ref))
    if as_json:
        emit_json(detail)
        return
    table(["field", "value"], detail_rows(detail), title=detail["name"], wrap=True)


def detail_rows(detail: dict) -> list[tuple[str, object]]:
    """Every stored field a reader wants, as (label, text) rows; descriptions as plain text."""
    model = detail.get("model") or {}
    return [
        *_field_rows(detail, model),
        *_description_rows(detail, model),
        *_signature_rows(detail["signatures"]),
        *_file_rows(detail["files"], detail.get("local_files", [])),
        *_job_rows(detail["jobs"]),
    ]


def _field_rows(detail: dict, model: dict) -> list[tuple[str, object]]:
    """The version's and its model's single-valued fields, then why it is unsigned (if it is)."""
    status = detail.get("sign_status")
    rows = [
        ("ref", detail["ref"]),
        ("version", detail["version_id"]),
        ("model", detail["model_id"]),
        ("name", detail["name"]),
        ("version name", detail["version_name"]),
        ("creator", model.get("creator") or ""),
        ("base model", detail["base_model"]),
        ("url", detail["url"]),
        ("trigger words", "\n".join(detail["trained_words"]) or "(none)"),
        ("source", detail["source"]),
        ("downloads", model.get("download_count")),
        ("tags", ", ".join(model.get("tags") or [])),
        ("nsfw", "yes" if detail["nsfw"] else "no"),
        ("civitai mode", detail["mode"] or "live"),
        (
            "early access",
            ("until " + detail["early_access_ends_at"] if detail["early_access_ends_at"] else "yes")
            if detail["early_access"]
            else "no",
        ),
        ("published", detail["published_at"]),
        ("status", detail["status"]),
        ("gone", detail["gone_at"] or "no"),
    ]
    if status:
        rows.append(
            ("signing", status["state"] + (f": {status['reason']}" if status["reason"] else ""))
        )
    return rows


def _description_rows(detail: dict, model: dict) -> list[tuple[str, object]]:
    from registry.catalog import html_to_text

    return [
        (label, html_to_text(text))
        for label, text in (
            ("description", detail.get("description")),
            ("model description", model.get("description")),
        )
        if text and text.strip()
    ]


def _signature_rows(signatures: list[dict]) -> list[tuple[str, object]]:
    return [
        (
            f"signature [{s['profile']}]",
            f"strength {s['strength']:.4g}, consistency {s['consistency']:.4g}, {s['n_samples']} samples"
            + ("" if s["valid"] else ", NOT VALID")
            + (f", flags: {', '.join(s['flags'])}" if s["flags"] else ""),
        )
        for s in signatures
    ]


def _file_rows(files: list[dict], local_files: list[dict]) -> list[tuple[str, object]]:
    """The registry's files with their hashes, then the user's own copies found by ``scan``."""
    rows = []
    for f in files:
        size = f" {_size(f['size_bytes'])}" if f.get("size_bytes") else ""
        rows.append(
            (
                f"file {f['id']}",
                f"{f['name']}{size} [{f['state']}]" + (f" {f['error']}" if f["error"] else ""),
            )
        )
        if f["hashes"]:
            rows.append(("  hashes", "\n".join(f"{k} {v}" for k, v in f["hashes"].items())))
    for lf in local_files:
        rows.append(("local file", f"{lf['path']} [{lf['status']}]"))
    return rows


def _job_rows(jobs: list[dict]) -> list[tuple[str, object]]:
    return [
        (
            f"job {j['id']} [{j['profile']}]",
            f"{j['state']} after {j['attempts']} attempt(s)"
            + (f": {j['last_error']}" if j["last_error"] else ""),
        )
        for j in jobs
    ]


def notes(r: dict) -> str:
    """What a listing row must not hide: Civitai mode, early access, NSFW, gone."""
    out = []
    status = r.get("sign_status")
    if status:
        out.append(status["state"] + (f": {status['reason']}" if status["reason"] else ""))
    if r.get("mode"):
        out.append(r["mode"])
    if r.get("early_access"):
        out.append(
            "early access"
            + (f" until {r['early_access_ends_at'][:10]}" if r.get("early_access_ends_at") else "")
        )
    if r.get("nsfw"):
        out.append("nsfw")
    if r.get("gone"):
        out.append("gone")
    return ", ".join(out)


@hookimpl
def register_commands(cli):
    cli.add_command(loras)
    cli.add_command(show)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"
