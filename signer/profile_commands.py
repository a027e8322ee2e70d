"""``carlos-reg signer profiles|prompts|samples``: what the profiles this machine defines (and
the registry holds) are, and exactly what each one generates.

Nothing heavy is imported at module level: ``carlos-reg --help`` must not import torch.
"""

from __future__ import annotations

import click

from registry.app import App, pass_app
from registry.cli_options import limit_option
from registry.output import emit_json, info, output_options, table


@click.command(name="profiles")
@output_options
@pass_app
def profiles_command(app: App, as_json):
    """Signer profiles this machine defines (built-in and profiles.toml) and their hashes."""
    from signer.profiles import profiles_file

    rows = _profile_rows(app)
    if as_json:
        emit_json({"profiles_file": str(profiles_file(app.settings)), "profiles": rows})
        return
    table(
        ["name", "hash", "signatures", "base model", "clip", "samples", "sampling"],
        [
            (
                r["name"] + ("" if r.get("defined_here", True) else " (registry only)"),
                r.get("hash", "")[:12],
                r.get("signatures", 0),
                r.get("base_model_location") or _short(r.get("error", "")),
                (r.get("settings") or {}).get("clip_model", ""),
                _sample_count(r),
                ((r.get("settings") or {}).get("sampling") or {}).get("mode", ""),
            )
            for r in rows
        ],
    )


def _profile_rows(app: App) -> list[dict]:
    """The profiles defined here (or why one does not load), then the registry's other profiles
    with signatures (e.g. the imported carlos-published); each with its signature count."""
    from signer.errors import ProfileError
    from signer.profiles import available_profiles, load_profile

    rows = []
    for name in available_profiles(app.settings):
        try:
            rows.append(load_profile(name, app.settings).describe())
        except ProfileError as exc:
            rows.append({"name": name, "error": str(exc)})
    by_hash = {r["hash"]: r for r in rows if "hash" in r}
    for r in rows:
        r["signatures"] = 0
    for name, digest, n, settings in _signed_profiles(app):
        if digest in by_hash:
            by_hash[digest]["signatures"] = n
        else:
            rows.append(
                {
                    "name": name,
                    "hash": digest,
                    "settings": settings,
                    "signatures": n,
                    "defined_here": False,
                }
            )
    return rows


def _signed_profiles(app: App) -> list[tuple]:
    """(name, hash, signature count, settings) of each registry profile with signatures."""
    import sqlalchemy as sa

    from registry.models import Signature, SignerProfile

    with app.db.read() as s:
        counts = dict(
            s.execute(
                sa.select(Signature.profile_id, sa.func.count()).group_by(Signature.profile_id)
            ).all()
        )
        stored = (
            s.execute(sa.select(SignerProfile).where(SignerProfile.id.in_(list(counts))))
            .scalars()
            .all()
        )
        return [(p.name, p.hash, counts[p.id], dict(p.settings or {})) for p in stored]


def _sample_count(row: dict):
    """Prompts times seeds of a profile's settings ("" when they do not say)."""
    st = row.get("settings") or {}
    try:
        return (st["prompt_set"].get("subset") or st["prompt_set"]["size"]) * st["seeds"]["count"]
    except (KeyError, TypeError, AttributeError):
        return ""


@click.command(name="prompts")
@click.argument("profile_name", metavar="PROFILE")
@click.option(
    "--query",
    is_flag=True,
    help="The query prompts P' (search) instead of the index prompts P (signing).",
)
@output_options
@pass_app
def prompts_command(app: App, profile_name, query, as_json):
    """A profile's index prompts (or query prompts) in the set's own order, with their set's hash.

    For ``paper`` these are the reference's prompts_for_indexing() (or prompts_for_retrieval()),
    category by category, subcategory by subcategory: check them before spending GPU hours."""
    from signer.profiles import load_profile

    profile = load_profile(profile_name, app.settings)
    ps = profile.prompt_set(query)
    rows = [
        {"index": i, "category": p.category, "subcategory": p.subcategory, "prompt": p.text}
        for i, p in enumerate(profile.listed_prompts(query))
    ]
    doc = {
        "profile": profile.name,
        "profile_hash": profile.hash,
        "part": "query" if query else "index",
        "prompt_set": {
            "name": ps.name,
            "version": ps.version,
            "sha256": ps.sha256,
            "size": len(ps.prompts),
        },
        "count": len(rows),
        "prompts": rows,
    }
    if as_json:
        emit_json(doc)
        return
    table(
        ["#", "category", "subcategory", "prompt"],
        [(r["index"], r["category"], r["subcategory"], r["prompt"]) for r in rows],
    )
    info(f"{len(rows)} {doc['part']} prompts of {ps.name} {ps.version} (sha256 {ps.sha256})")


@click.command(name="samples")
@click.argument("profile_name", metavar="PROFILE")
@click.option(
    "--trigger",
    "triggers",
    multiple=True,
    metavar="WORD",
    help="A trainedWords entry, verbatim (repeatable, in order); shows the LoRA-branch prompt.",
)
@click.option(
    "--triggers-missing",
    is_flag=True,
    help="The version has no trainedWords list at all (the reference then appends ', ').",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, metavar="K")
@limit_option("How many samples (0: all).", metavar="N")
@output_options
@pass_app
def samples_command(app: App, profile_name, triggers, triggers_missing, offset, limit, as_json):
    """A profile's samples in visiting order: prompt, LoRA-branch prompt, image number, noise seed and
    the SHA-256 of each sample's initial noise (standard normal, float16 bytes, shape (4, H/8, W/8))."""
    from registry.errors import UsageError
    from signer.engine import trigger_suffix
    from signer.noise import noise_sha256
    from signer.profiles import load_profile

    if triggers and triggers_missing:
        raise UsageError("--trigger and --triggers-missing contradict each other")
    profile = load_profile(profile_name, app.settings)
    suffix = trigger_suffix(
        None if triggers_missing else list(triggers), profile.settings["trigger_words"]
    )
    samples = profile.samples()
    chosen = samples[offset : offset + limit] if limit else samples[offset:]
    rows = [
        {
            "index": x.index,
            "prompt": x.prompt,
            "lora_prompt": x.prompt + suffix,
            "image_index": x.image,
            "seed": x.seed,
            "noise_row": x.row,
            "noise_sha256": noise_sha256(profile.sample_noise(x)),
        }
        for x in chosen
    ]
    doc = {
        "profile": profile.name,
        "profile_hash": profile.hash,
        "total": len(samples),
        "offset": offset,
        "noise": {
            "batch": profile.noise_batch,
            "dtype": profile.settings.get("noise_dtype"),
            "shape": list(profile.latent_shape),
        },
        "trigger_suffix": suffix,
        "samples": rows,
    }
    if as_json:
        emit_json(doc)
        return
    table(
        ["#", "image", "seed", "row", "noise sha256", "LoRA-branch prompt"],
        [
            (
                r["index"],
                r["image_index"],
                r["seed"],
                r["noise_row"],
                r["noise_sha256"][:16],
                r["lora_prompt"],
            )
            for r in rows
        ],
    )
    info(f"samples {offset}–{offset + len(rows) - 1} of {len(samples)}")


def _short(error: str) -> str:
    if "reference prompts" in error:
        return "needs the reference prompt file (set CARLOS_REG_CARLOS_PROMPTS; --json says more)"
    return error if len(error) <= 90 else error[:89] + "…"
