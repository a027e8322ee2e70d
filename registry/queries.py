"""Read queries shared by the CLI, plugins and the API: LoRA listings as plain dicts.

One SQL statement per listing (no per-row ORM objects), so 100,000 rows stay cheap. One version
in full is ``registry.lora_detail``; why a version is unsigned, ``registry.sign_status``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session

from registry.catalog import (
    display_words,
    in_early_access,
    is_nsfw,
    mode_clause,
    nsfw_clause,
    on_civitai,
)
from registry.models import Model, Signature, SignerProfile, Version, utcnow
from registry.sign_status import sign_status
from registry.sorts import SORTS

CIVITAI_SITE = "https://civitai.com"


def civitai_url(model_id: int | None, version_id: int | None) -> str | None:
    if model_id is not None and version_id is not None and version_id > 0:
        return f"{CIVITAI_SITE}/models/{model_id}?modelVersionId={version_id}"
    if model_id is not None:
        return f"{CIVITAI_SITE}/models/{model_id}"
    if version_id is not None and version_id > 0:
        return f"{CIVITAI_SITE}/api/v1/model-versions/{version_id}"
    return None


def _chosen_signature(profile_id: int | None, version_ids: list[int] | None = None):
    """Subquery: the signature id shown for each version (the given profile's, else the newest)."""
    stmt = sa.select(Signature.version_id.label("vid"), sa.func.max(Signature.id).label("sid"))
    if profile_id is not None:
        stmt = stmt.where(Signature.profile_id == profile_id)
    if version_ids is not None:  # a few rows (search results): do not group the whole table
        stmt = stmt.where(Signature.version_id.in_(version_ids))
    return stmt.group_by(Signature.version_id).subquery("chosen")


def lora_rows(
    session: Session,
    *,
    signed: bool | None = None,
    base_model: str | None = None,
    profile_id: int | None = None,
    limit: int | None = None,
    offset: int = 0,
    version_ids: list[int] | None = None,
    nsfw: bool | None = None,
    mode: str | None = None,
    query: str | None = None,
    sort: str = "version",
) -> tuple[int, list[dict[str, Any]]]:
    """Return ``(total, rows)`` of LoRA listing dicts, ordered by ``sort`` (one of ``SORTS``).

    A page (``limit``) is found first by id (an indexed EXISTS for ``signed``), then only its rows
    are joined with their signatures; without a limit one grouped join reads everything.
    ``nsfw`` filters by the one NSFW rule (``registry.catalog``); ``mode`` is live, archived or
    takendown; ``query`` keeps rows whose model or version name contains it (any case). Unsigned
    rows carry ``sign_status`` (``sign_status()``).
    """
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}")
    where = _listing_filters(signed, base_model, profile_id, version_ids, nsfw, mode, query)
    needs_model = (
        nsfw is not None or mode is not None or bool(query) or sort in ("name", "downloads")
    )

    def base(stmt):
        return stmt.outerjoin(Model, Model.id == Version.model_id) if needs_model else stmt

    total = session.execute(
        base(sa.select(sa.func.count()).select_from(Version)).where(*where)
    ).scalar_one()
    if limit:
        ids_stmt = _ordered_ids(base(sa.select(Version.id)).where(*where), sort, profile_id)
        ids = session.execute(ids_stmt.offset(offset).limit(limit)).scalars().all()
        if not ids:
            return total, []
        chosen = _chosen_signature(profile_id, list(ids))
        rows = _listing_dicts(session, [Version.id.in_(ids)], [Version.id], 0, chosen)
        rank = {vid: i for i, vid in enumerate(ids)}
        rows.sort(key=lambda r: rank[r["version_id"]])
    else:
        chosen = _chosen_signature(profile_id, version_ids)
        rows = _listing_dicts(session, where, _sort_order(sort), offset, chosen)
    _add_sign_status(session, rows, profile_id)
    return total, rows


def _listing_filters(signed, base_model, profile_id, version_ids, nsfw, mode, query) -> list:
    """The WHERE clauses of a listing (``lora_rows``' filters); Model is joined when they name it."""
    where = []
    if query:
        words = query.lower()
        where.append(
            sa.or_(
                sa.func.lower(Model.name).contains(words, autoescape=True),
                sa.func.lower(Version.name).contains(words, autoescape=True),
            )
        )
    if nsfw is not None:
        where.append(nsfw_clause() if nsfw else sa.not_(nsfw_clause()))
    if mode is not None:
        where.append(mode_clause(mode))
    if signed is not None:
        other = aliased(Signature)  # not the outer query's Signature
        has = sa.select(other.id).where(other.version_id == Version.id).correlate(Version)
        if profile_id is not None:
            has = has.where(other.profile_id == profile_id)
        where.append(sa.exists(has) if signed else ~sa.exists(has))
    if base_model:
        where.append(sa.func.lower(Version.base_model) == base_model.lower())
    if version_ids is not None:
        where.append(Version.id.in_(version_ids))
    return where


def _ordered_ids(ids_stmt, sort: str, profile_id: int | None):
    """``ids_stmt`` in ``sort`` order (the measures join the signature a row shows)."""
    if sort in ("strength", "consistency"):
        chosen = _chosen_signature(profile_id)
        ids_stmt = ids_stmt.outerjoin(chosen, chosen.c.vid == Version.id).outerjoin(
            Signature, Signature.id == chosen.c.sid
        )
    return ids_stmt.order_by(*_sort_order(sort))


# what a listing row reads: the version, its model, the shown signature and its profile's name
_LISTING_COLUMNS = (
    Version.id,
    Version.model_id,
    Version.name,
    Model.name.label("model_name"),
    Version.base_model,
    Version.trained_words,
    Version.source,
    Version.air,
    Version.gone_at,
    Model.nsfw,
    Version.nsfw_level,
    Model.nsfw_level.label("model_nsfw_level"),
    Model.mode,
    Version.availability,
    Version.early_access_ends_at,
    Version.published_at,
    Model.origin,
    Signature.strength,
    Signature.consistency,
    Signature.valid,
    Signature.flags,
    Signature.n_samples,
    SignerProfile.name.label("profile"),
)


def _listing_dicts(session: Session, where: list, order: list, offset: int, chosen) -> list[dict]:
    """The rows that match ``where`` joined with their ``chosen`` signature, as listing dicts."""
    stmt = (
        sa.select(*_LISTING_COLUMNS)
        .outerjoin(Model, Model.id == Version.model_id)
        .outerjoin(chosen, chosen.c.vid == Version.id)
        .outerjoin(Signature, Signature.id == chosen.c.sid)
        .outerjoin(SignerProfile, SignerProfile.id == Signature.profile_id)
        .where(*where)
        .order_by(*order)
        .offset(offset)
    )
    now = utcnow()
    return [lora_dict(r._mapping, now) for r in session.execute(stmt)]


def _add_sign_status(session: Session, rows: list[dict], profile_id: int | None) -> None:
    """Say on each unsigned row why it has no signature (``sign_status``)."""
    unsigned = [r["version_id"] for r in rows if not r["signed"]]
    if unsigned:
        status = sign_status(session, unsigned, profile_id)
        for r in rows:
            if not r["signed"]:
                r["sign_status"] = status[r["version_id"]]


def _sort_order(sort: str) -> list:
    """ORDER BY of a ``SORTS`` name: version id breaks ties; unsigned rows last for the measures."""
    if sort == "name":
        return [sa.func.lower(sa.func.coalesce(Model.name, Version.name)), Version.id]
    if sort in ("strength", "consistency"):
        col = Signature.strength if sort == "strength" else Signature.consistency
        return [col.is_(None), col.desc(), Version.id]
    if sort == "downloads":
        return [Model.download_count.is_(None), Model.download_count.desc(), Version.id]
    if sort == "newest":
        return [Version.published_at.is_(None), Version.published_at.desc(), Version.id.desc()]
    return [Version.id]


def lora_ref(model_id: int | None, version_id: int) -> str:
    """The shortest REF that names this version for ``show``/``similar``/``compare``."""
    if version_id < 0:
        return f"local:{-version_id}"
    return f"civitai:{model_id}@{version_id}" if model_id is not None else str(version_id)


def display_name(model_name: str | None, version_name: str | None) -> str:
    return (model_name or "").strip() or (version_name or "").strip()


def lora_dict(r, now=None) -> dict[str, Any]:
    early = r["source"] == "civitai" and in_early_access(
        r["availability"], r["early_access_ends_at"], now or utcnow()
    )
    out = {
        "version_id": r["id"],
        "model_id": r["model_id"],
        "name": display_name(r["model_name"], r["name"]),
        "version_name": r["name"],
        "base_model": r["base_model"],
        "url": civitai_url(r["model_id"], r["id"]) if on_civitai(r["origin"]) else None,
        "ref": lora_ref(r["model_id"], r["id"]),
        "air": r["air"],
        "trained_words": display_words(r["trained_words"]),
        "source": r["source"],
        "nsfw": is_nsfw(r["nsfw_level"], r["model_nsfw_level"], r["nsfw"]),
        "mode": r["mode"],  # Archived / TakenDown on Civitai, else null
        "early_access": early,
        "early_access_ends_at": iso_or_none(r["early_access_ends_at"]) if early else None,
        "published_at": iso_or_none(r["published_at"]),
        "gone": r["gone_at"] is not None,
        "signed": r["strength"] is not None,
    }
    if r["strength"] is not None:
        out.update(
            strength=float(r["strength"]),
            consistency=float(r["consistency"]),
            profile=r["profile"],
            valid=bool(r["valid"]),
            flags=list(r["flags"] or []),
            n_samples=r["n_samples"],
        )
    return out


def unsigned_message(session: Session, version_id: int, profile: SignerProfile) -> str:
    """Why a version has no signature under ``profile``, and what to do about it (one line)."""
    others = (
        session.execute(
            sa.select(SignerProfile.name)
            .join(Signature, Signature.profile_id == SignerProfile.id)
            .where(Signature.version_id == version_id)
            .distinct()
        )
        .scalars()
        .all()
    )
    if others:
        return (
            f"LoRA {version_id} has no signature under profile {profile.name!r}; it is signed under "
            f"{', '.join(sorted(others))}: pass --profile NAME"
        )
    status = sign_status(session, [version_id], profile.id)[version_id]
    ref = lora_ref(
        session.execute(sa.select(Version.model_id).where(Version.id == version_id)).scalar(),
        version_id,
    )
    if status["state"] == "unsignable":
        return f"LoRA {version_id} cannot be signed: {status['reason']}"
    if status["state"] == "failed":
        return f"LoRA {version_id} has no signature: signing failed ({status['reason']})"
    return f"LoRA {version_id} has no signature yet ({status['state']}): sign it with `carlos-reg sign {ref}`"


def registry_stats(session: Session) -> dict[str, Any]:
    """What the search page's stats line and selects show: signed LoRAs per profile and the base
    models in the registry (one entry per name regardless of case, spelled as most versions spell it)."""
    profiles = session.execute(
        sa.select(SignerProfile.name, SignerProfile.hash, sa.func.count(Signature.id))
        .join(Signature, Signature.profile_id == SignerProfile.id)
        .group_by(SignerProfile.name, SignerProfile.hash)
        .order_by(sa.func.count(Signature.id).desc())
    ).all()
    spellings: dict[str, dict[str, int]] = {}
    for name, n in session.execute(
        sa.select(Version.base_model, sa.func.count())
        .where(Version.base_model.is_not(None))
        .group_by(Version.base_model)
    ):
        spellings.setdefault(name.lower(), {})[name] = n
    base_models = sorted(
        (
            {"name": max(forms, key=lambda f: (forms[f], f)), "count": sum(forms.values())}
            for forms in spellings.values()
        ),
        key=lambda b: (-b["count"], b["name"].lower()),
    )
    return {
        "loras": session.execute(sa.select(sa.func.count()).select_from(Version)).scalar_one(),
        "profiles": [{"name": n, "hash": h, "signed": c} for n, h, c in profiles],
        "base_models": base_models,
    }


def next_local_version_id(session) -> int:
    """The id for a new local LoRA version: below every id in use, and negative (REF ``local:N``)."""
    lowest = session.execute(sa.select(sa.func.min(Version.id))).scalar()
    return min(lowest or 0, 0) - 1


def iso_or_none(value) -> str | None:
    """A timestamp as ISO 8601 text for JSON, or None."""
    return value.isoformat() if value is not None else None
