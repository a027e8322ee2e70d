"""Everything the registry knows about one LoRA version, as one plain dict (``show``, the API and
the LoRA page): its listing row, then the version's own fields, its model, files, local copies,
signatures and jobs."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from registry.catalog import words_missing
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
)
from registry.queries import iso_or_none, lora_rows


def lora_detail(session: Session, version_id: int) -> dict[str, Any]:
    """Everything the registry knows about one version: metadata, files, signatures, jobs."""
    _, rows = lora_rows(session, version_ids=[version_id])
    out = rows[0]
    version = session.get(Version, version_id)
    out.update(_version_fields(version))
    if version.model_id is not None:
        model = session.get(Model, version.model_id)
        if model is not None:
            out["model"] = _model_doc(session, model)
    out["files"] = _files(session, version_id)
    out["local_files"] = _local_files(session, version_id)
    out["signatures"] = _signatures(session, version_id)
    out["jobs"] = _jobs(session, version_id)
    return out


def _version_fields(version: Version) -> dict[str, Any]:
    """What a listing row leaves out of the version itself."""
    return dict(
        description=version.description,
        published_at=iso_or_none(version.published_at),
        created_at=iso_or_none(version.civitai_created_at),
        updated_at=iso_or_none(version.civitai_updated_at),
        status=version.status,
        availability=version.availability,
        usage_control=version.usage_control,
        nsfw_level=version.nsfw_level,
        first_seen_at=iso_or_none(version.first_seen_at),
        gone_at=iso_or_none(version.gone_at),
        # the entries as stored (as Civitai gives them; what the signer appends), and whether the
        # payload had no list at all
        trained_words_verbatim=list(version.trained_words or []),
        trained_words_missing=words_missing(version.raw),
    )


def _model_doc(session: Session, model: Model) -> dict[str, Any]:
    """The version's model: creator, tags, license flags and Civitai's state."""
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
    creator = session.get(Creator, model.creator_id) if model.creator_id is not None else None
    return {
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
        "gone_at": iso_or_none(model.gone_at),
    }


def _files(session: Session, version_id: int) -> list[dict[str, Any]]:
    files = (
        session.exec(sa.select(File).where(File.version_id == version_id).order_by(File.id))
        .scalars()
        .all()
    )
    return [_file_doc(f) for f in files]


def _file_doc(f: File) -> dict[str, Any]:
    """One file: what Civitai says of it (hashes, scans) and its download state here."""
    return {
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
        "scanned_at": iso_or_none(f.scanned_at),
        "state": f.state,
        "error": f.error,
        "verified_at": iso_or_none(f.verified_at),
    }


def _local_files(session: Session, version_id: int) -> list[dict[str, Any]]:
    """Copies found by ``scan`` in the user's own folders."""
    local = (
        session.exec(
            sa.select(LocalFile).where(LocalFile.version_id == version_id).order_by(LocalFile.path)
        )
        .scalars()
        .all()
    )
    return [
        {
            "path": lf.path,
            "status": lf.status,
            "sha256": lf.sha256,
            "size_bytes": lf.size_bytes,
            "last_seen_at": iso_or_none(lf.last_seen_at),
            "missing_since": iso_or_none(lf.missing_since),
        }
        for lf in local
    ]


def _signatures(session: Session, version_id: int) -> list[dict[str, Any]]:
    """Every profile's signature of the version (the listing row shows one)."""
    sigs = session.execute(
        sa.select(Signature, SignerProfile.name, SignerProfile.hash)
        .join(SignerProfile, SignerProfile.id == Signature.profile_id)
        .where(Signature.version_id == version_id)
        .order_by(Signature.id)
    ).all()
    return [
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
            "created_at": iso_or_none(s.created_at),
        }
        for s, name, digest in sigs
    ]


def _jobs(session: Session, version_id: int) -> list[dict[str, Any]]:
    jobs = session.execute(
        sa.select(SignJob, SignerProfile.name)
        .join(SignerProfile, SignerProfile.id == SignJob.profile_id)
        .where(SignJob.version_id == version_id)
        .order_by(SignJob.id)
    ).all()
    return [
        {
            "id": j.id,
            "profile": name,
            "state": j.state,
            "attempts": j.attempts,
            "last_error": j.last_error,
        }
        for j, name in jobs
    ]
