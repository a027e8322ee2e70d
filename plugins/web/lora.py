"""Everything the LoRA page shows, as one JSON document: the registry's details, the signature
with its registry percentiles, the before/after pairs, the author's previews (as the operator
allows), the nearest neighbours by Direction and the claim-vs-behavior line.

Parts that need a model (the claim check) or a signature (neighbours) say why they are missing
instead of failing the page."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from registry.catalog import html_to_text
from registry.errors import CarlosError, ModelUnavailable
from registry.images import first_thumbnails, preview_mode, previews_for_page, sample_pairs
from registry.lora_detail import lora_detail
from registry.models import Signature, SignerProfile, Version
from registry.refs import resolve_ref

log = logging.getLogger(__name__)
NEIGHBOURS = 8


def percentile(session, profile_id: int, column, value: float) -> float:
    """Share (in %) of this profile's signatures at or below ``value``, as the copyright report counts."""
    at_or_below, total = session.execute(
        sa.select(sa.func.sum(sa.case((column <= value, 1), else_=0)), sa.func.count()).where(
            Signature.profile_id == profile_id
        )
    ).one()
    return round(100.0 * (at_or_below or 0) / total, 1) if total else 0.0


def _signature(session, version_id: int) -> dict | None:
    row = session.execute(
        sa.select(Signature, SignerProfile.name)
        .join(SignerProfile, SignerProfile.id == Signature.profile_id)
        .where(Signature.version_id == version_id)
        .order_by(Signature.id.desc())
    ).first()
    if row is None:
        return None
    sig, profile = row
    images_of = sig.version_id
    if sig.source == "reused" and isinstance((sig.estimates or {}).get("reused_from"), int):
        images_of = sig.estimates[
            "reused_from"
        ]  # the same file's images were kept when it was signed
    return {
        "profile": profile,
        "profile_id": sig.profile_id,
        "strength": sig.strength,
        "consistency": sig.consistency,
        "n_samples": sig.n_samples,
        "valid": sig.valid,
        "flags": list(sig.flags or []),
        "source": sig.source,
        "strength_percentile": percentile(
            session, sig.profile_id, Signature.strength, sig.strength
        ),
        "consistency_percentile": percentile(
            session, sig.profile_id, Signature.consistency, sig.consistency
        ),
        "pairs": sample_pairs(session, sig.profile_id, images_of),
    }


def lora_page(app, ref: str, engine, checkers: dict) -> dict:
    with app.db.read() as session:
        vid = resolve_ref(session, ref)
        doc = lora_detail(session, vid)
        doc["signature"] = _signature(session, vid)
        previews = session.execute(sa.select(Version.previews).where(Version.id == vid)).scalar()
    doc["description_text"] = html_to_text(
        doc.get("description") or (doc.get("model") or {}).get("description")
    )
    doc["previews"] = previews_for_page(previews, preview_mode(app.settings))
    doc["lora_page"] = f"/lora/{doc['ref']}"
    sig = doc["signature"]
    doc["neighbours"] = (
        _neighbours(app, engine, vid, sig) if sig else {"error": "not signed yet", "results": []}
    )
    doc["claim"] = _claim(app, checkers, vid, sig) if sig else None
    return doc


def _neighbours(app, engine, vid: int, sig: dict) -> dict:
    try:
        found = engine.similar(str(vid), k=NEIGHBOURS, profile=sig["profile"])
    except CarlosError as exc:  # e.g. a zero Direction: nothing is similar to it
        return {"error": str(exc), "results": []}
    with app.db.read() as session:
        thumbs = first_thumbnails(
            session, [r["version_id"] for r in found["results"]], sig["profile_id"]
        )
    for r in found["results"]:
        r["thumbnail"] = thumbs.get(r["version_id"])
    return {"near_duplicate_cos": found["near_duplicate_cos"], "results": found["results"]}


def _claim(app, checkers: dict, vid: int, sig: dict) -> dict:
    from signer.claim_check import ClaimChecker

    try:
        checker = checkers.get(sig["profile"])
        if checker is None:  # keeps the CLIP model and the vocabulary's vectors warm
            checker = checkers[sig["profile"]] = ClaimChecker(app, sig["profile"])
        checker.index = checker.engine.index(checker.row)
        return checker.check([vid])[0]
    except ModelUnavailable as exc:
        log.error("claim check for LoRA %s: %s", vid, exc)
        return {"error": "the claim check needs a model this server does not have"}
    except CarlosError as exc:
        return {"error": str(exc)}
