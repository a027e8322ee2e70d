"""Read queries shared by the CLI, plugins and the API: LoRA listings and details as plain dicts.

One SQL statement per listing (no per-row ORM objects), so 100,000 rows stay cheap.
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
    words_missing,
)
from registry.models import (
    Creator,
    File,
    LocalFile,
    Model,
    ModelTag,
    Signature,
    SignerProfile,
    SignJob,
    Tag,
    Version,
    utcnow,
)

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
    where = []
    needs_model = (
        nsfw is not None or mode is not None or bool(query) or sort in ("name", "downloads")
    )
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

    def base(stmt):
        return stmt.outerjoin(Model, Model.id == Version.model_id) if needs_model else stmt

    total = session.execute(
        base(sa.select(sa.func.count()).select_from(Version)).where(*where)
    ).scalar_one()
    order = [Version.id]
    if limit:
        page_stmt = base(sa.select(Version.id)).where(*where)
        if sort in ("strength", "consistency"):
            chosen = _chosen_signature(profile_id)
            page_stmt = page_stmt.outerjoin(chosen, chosen.c.vid == Version.id).outerjoin(
                Signature, Signature.id == chosen.c.sid
            )
        page = (
            session.execute(page_stmt.order_by(*_sort_order(sort)).offset(offset).limit(limit))
            .scalars()
            .all()
        )
        if not page:
            return total, []
        where, version_ids, offset = [Version.id.in_(page)], list(page), 0
        rank = {vid: i for i, vid in enumerate(page)}
    else:
        order = _sort_order(sort)
    chosen = _chosen_signature(profile_id, version_ids)
    stmt = (
        sa.select(
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
        .outerjoin(Model, Model.id == Version.model_id)
        .outerjoin(chosen, chosen.c.vid == Version.id)
        .outerjoin(Signature, Signature.id == chosen.c.sid)
        .outerjoin(SignerProfile, SignerProfile.id == Signature.profile_id)
        .where(*where)
        .order_by(*order)
        .offset(offset)
    )
    now = utcnow()
    rows = [lora_dict(r._mapping, now) for r in session.execute(stmt)]
    if limit:
        rows.sort(key=lambda r: rank[r["version_id"]])
    unsigned = [r["version_id"] for r in rows if not r["signed"]]
    if unsigned:
        status = sign_status(session, unsigned, profile_id)
        for r in rows:
            if not r["signed"]:
                r["sign_status"] = status[r["version_id"]]
    return total, rows


# ``loras --sort``: name → ORDER BY (version id breaks ties; unsigned rows last for the measures)
SORTS = ("version", "name", "strength", "consistency", "downloads", "newest")


def _sort_order(sort: str) -> list:
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
        "early_access_ends_at": _iso(r["early_access_ends_at"]) if early else None,
        "published_at": _iso(r["published_at"]),
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


def lora_detail(session: Session, version_id: int) -> dict[str, Any]:
    """Everything the registry knows about one version: metadata, files, signatures, jobs."""
    _, rows = lora_rows(session, version_ids=[version_id])
    out = rows[0]
    version = session.get(Version, version_id)
    out.update(
        description=version.description,
        published_at=_iso(version.published_at),
        created_at=_iso(version.civitai_created_at),
        updated_at=_iso(version.civitai_updated_at),
        status=version.status,
        availability=version.availability,
        usage_control=version.usage_control,
        nsfw_level=version.nsfw_level,
        first_seen_at=_iso(version.first_seen_at),
        gone_at=_iso(version.gone_at),
        # the entries as stored (as Civitai gives them; what the signer appends), and whether the
        # payload had no list at all
        trained_words_verbatim=list(version.trained_words or []),
        trained_words_missing=words_missing(version.raw),
    )
    if version.model_id is not None:
        model = session.get(Model, version.model_id)
        if model is not None:
            creator = (
                session.get(Creator, model.creator_id) if model.creator_id is not None else None
            )
            tags = (
                session.exec(
                    sa.select(Tag.name)
                    .join(ModelTag, ModelTag.tag_id == Tag.id)
                    .where(ModelTag.model_id == model.id)
                    .order_by(Tag.name)
                )
                .scalars()
                .all()
            )
            creator = (
                session.get(Creator, model.creator_id) if model.creator_id is not None else None
            )
            out["model"] = {
                "id": model.id,
                "name": model.name,
                "type": model.type,
                "nsfw": model.nsfw,
                "creator": creator.username if creator is not None else None,
                "nsfw_level": model.nsfw_level,
                "mode": model.mode,
                "description": model.description,
                "tags": list(tags),
                "download_count": model.download_count,
                "license": {
                    "allow_no_credit": model.allow_no_credit,
                    "allow_derivatives": model.allow_derivatives,
                    "allow_different_license": model.allow_different_license,
                    "allow_commercial_use": model.allow_commercial_use,
                },
                "gone_at": _iso(model.gone_at),
            }
    files = (
        session.exec(sa.select(File).where(File.version_id == version_id).order_by(File.id))
        .scalars()
        .all()
    )
    out["files"] = [
        {
            "id": f.id,
            "civitai_file_id": f.civitai_file_id,
            "name": f.name,
            "size_bytes": f.size_bytes,
            "type": f.type,
            "format": f.format,
            "fp": f.fp,
            "size_type": f.size_type,
            "primary": f.primary,
            "hashes": {
                k: v
                for k, v in (
                    ("SHA256", f.sha256),
                    ("AutoV1", f.autov1),
                    ("AutoV2", f.autov2),
                    ("AutoV3", f.autov3),
                    ("BLAKE3", f.blake3),
                    ("CRC32", f.crc32),
                )
                if v
            },
            "sha256": f.sha256,
            "pickle_scan": f.pickle_scan,
            "pickle_scan_message": f.pickle_scan_message,
            "virus_scan": f.virus_scan,
            "virus_scan_message": f.virus_scan_message,
            "scanned_at": _iso(f.scanned_at),
            "state": f.state,
            "error": f.error,
            "verified_at": _iso(f.verified_at),
        }
        for f in files
    ]
    local = (
        session.exec(
            sa.select(LocalFile).where(LocalFile.version_id == version_id).order_by(LocalFile.path)
        )
        .scalars()
        .all()
    )
    out["local_files"] = [
        {
            "path": lf.path,
            "status": lf.status,
            "sha256": lf.sha256,
            "size_bytes": lf.size_bytes,
            "last_seen_at": _iso(lf.last_seen_at),
            "missing_since": _iso(lf.missing_since),
        }
        for lf in local
    ]
    sigs = session.execute(
        sa.select(Signature, SignerProfile.name, SignerProfile.hash)
        .join(SignerProfile, SignerProfile.id == Signature.profile_id)
        .where(Signature.version_id == version_id)
        .order_by(Signature.id)
    ).all()
    out["signatures"] = [
        {
            "profile": name,
            "profile_hash": digest,
            "strength": s.strength,
            "consistency": s.consistency,
            "dim": s.dim,
            "n_samples": s.n_samples,
            "valid": s.valid,
            "flags": list(s.flags or []),
            "estimates": s.estimates,
            "source": s.source,
            "reused_from_version": (s.estimates or {}).get("reused_from")
            if s.source == "reused"
            else None,
            "created_at": _iso(s.created_at),
        }
        for s, name, digest in sigs
    ]
    jobs = session.execute(
        sa.select(SignJob, SignerProfile.name)
        .join(SignerProfile, SignerProfile.id == SignJob.profile_id)
        .where(SignJob.version_id == version_id)
        .order_by(SignJob.id)
    ).all()
    out["jobs"] = [
        {
            "id": j.id,
            "profile": name,
            "state": j.state,
            "attempts": j.attempts,
            "last_error": j.last_error,
        }
        for j, name in jobs
    ]
    return out


# Why an unsigned version has no signature: files and jobs, in the order that decides.
SIGN_STATES = ("failed", "signing", "queued", "ready", "downloading", "deferred", "unsignable")


def sign_status(
    session: Session, version_ids: list[int], profile_id: int | None = None
) -> dict[int, dict[str, str | None]]:
    """``{version_id: {"state", "reason"}}`` for versions without a signature: ``failed`` (the job
    died; its error), ``signing``, ``queued``, ``ready`` (a verified file, not queued yet),
    ``downloading`` (a file still to fetch), ``deferred`` (early access) or ``unsignable`` (no file
    the signer can use; the file's reason). Jobs of ``profile_id`` only, when given."""
    out: dict[int, dict[str, str | None]] = {}
    for start in range(0, len(version_ids), 900):  # SQL parameter limits
        chunk = version_ids[start : start + 900]
        files: dict[int, list] = {}
        for vid, state, error, name in session.execute(
            sa.select(File.version_id, File.state, File.error, File.name)
            .where(File.version_id.in_(chunk))
            .order_by(File.primary.desc(), File.id)
        ):
            files.setdefault(vid, []).append((state, error, name))
        jobs = (
            sa.select(SignJob.version_id, SignJob.state, SignJob.last_error)
            .where(SignJob.kind == "lora", SignJob.version_id.in_(chunk))
            .order_by(SignJob.id)
        )
        if profile_id is not None:
            jobs = jobs.where(SignJob.profile_id == profile_id)
        job = {
            vid: (state, error) for vid, state, error in session.execute(jobs)
        }  # the newest job wins
        for vid in chunk:
            out[vid] = _one_status(files.get(vid, []), job.get(vid))
    return out


def _one_status(files: list, job: tuple | None) -> dict[str, str | None]:
    if job is not None and job[0] == "dead":
        return {
            "state": "failed",
            "reason": (job[1] or "").strip().splitlines()[0] if job[1] else None,
        }
    if job is not None and job[0] in ("running", "queued"):
        return {"state": "signing" if job[0] == "running" else "queued", "reason": None}
    states = [f[0] for f in files]
    for wanted, state in (
        ("verified", "ready"),
        ("pending", "downloading"),
        ("deferred", "deferred"),
    ):
        if wanted in states:
            return {"state": state, "reason": None}
    if not files:
        return {"state": "unsignable", "reason": "no files in the registry"}
    state, error, name = files[0]
    return {"state": "unsignable", "reason": f"{name}: {error or state}"}


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


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None
