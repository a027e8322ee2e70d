"""Registry rows from parsed Civitai payloads, and the state each file starts in.

Pure functions (no database): ``crawler.catalog_upsert`` writes what they return. ``file_roles``
decides a file's state from its role in the version: the version's download choice is
``pending``, or ``deferred`` while the version is in early access, or ``unavailable`` when the
model is Archived or TakenDown; a pickle-format primary file is ``unsupported``; the rest
``skipped``.
"""

from __future__ import annotations

from datetime import datetime

from crawler.parse import ParsedFile, ParsedModel, ParsedVersion
from registry.catalog import UNAVAILABLE_MODES
from registry.models import utcnow


def model_row(
    m: ParsedModel, creator_id: int | None, now: datetime, origin: str | None = None
) -> dict:
    return dict(
        id=m.id,
        name=m.name,
        description=m.description,
        type=m.type,
        nsfw=m.nsfw,
        nsfw_level=m.nsfw_level,
        poi=m.poi,
        minor=m.minor,
        availability=m.availability,
        mode=m.mode,
        allow_no_credit=m.allow_no_credit,
        allow_derivatives=m.allow_derivatives,
        allow_different_license=m.allow_different_license,
        allow_commercial_use=m.allow_commercial_use,
        download_count=m.download_count,
        thumbs_up_count=m.thumbs_up_count,
        creator_id=creator_id,
        source="civitai",
        origin=origin,
        raw=m.raw,
        raw_hash=m.raw_hash,
        last_seen_at=now,
        updated_at=now,
        gone_at=None,
    )


def version_row(v: ParsedVersion, now: datetime) -> dict:
    return dict(
        id=v.id,
        model_id=v.model_id,
        name=v.name,
        description=v.description,
        base_model=v.base_model,
        base_model_type=v.base_model_type,
        trained_words=v.trained_words,
        published_at=v.published_at,
        availability=v.availability,
        nsfw_level=v.nsfw_level,
        download_count=v.download_count,
        download_url=v.download_url,
        air=v.air,
        status=v.status,
        usage_control=v.usage_control,
        early_access_ends_at=v.early_access_ends_at,
        civitai_created_at=v.created_at,
        civitai_updated_at=v.civitai_updated_at,
        source="civitai",
        previews=v.previews,
        raw=v.raw,
        raw_hash=v.raw_hash,
        last_seen_at=now,
        updated_at=now,
        gone_at=None,
    )


def early_access_note(ends_at: datetime | None) -> str:
    until = f" until {ends_at.isoformat()}" if ends_at is not None else ""
    return f"early access{until}: not downloaded until it is public"


def file_roles(
    v: ParsedVersion, mode: str | None = None, now: datetime | None = None
) -> dict[int, tuple[str, str | None]]:
    """``civitai_file_id -> (state, error)`` for a version's files as the payload describes them.

    The file to download is ``pending``, or ``deferred`` while the version is in early access (no
    attempt is made or counted), or ``unavailable`` when the model is Archived or TakenDown.
    """
    chosen, why_not = v.download_choice()
    primary = v.primary_file()
    roles: dict[int, tuple[str, str | None]] = {}
    for f in v.files:
        if chosen is not None and f.civitai_file_id == chosen.civitai_file_id:
            if mode in UNAVAILABLE_MODES:
                roles[f.civitai_file_id] = (
                    "unavailable",
                    f"the model is {mode} on Civitai: never downloaded",
                )
            elif v.early_access(now or utcnow()):
                roles[f.civitai_file_id] = ("deferred", early_access_note(v.early_access_ends_at))
            else:
                roles[f.civitai_file_id] = (
                    "pending",
                    None if f.sha256 else "the API publishes no SHA256 for it yet",
                )
        elif (
            chosen is None and primary is not None and f.civitai_file_id == primary.civitai_file_id
        ):
            roles[f.civitai_file_id] = ("unsupported", why_not)
        else:
            roles[f.civitai_file_id] = ("skipped", None)
    return roles


def file_row(f: ParsedFile, version_id: int, is_primary: bool) -> dict:
    return dict(
        civitai_file_id=f.civitai_file_id,
        version_id=version_id,
        name=f.name,
        size_bytes=f.size_bytes,
        type=f.type,
        format=f.format,
        fp=f.fp,
        primary=is_primary,
        sha256=f.sha256,
        autov2=f.autov2,
        blake3=f.blake3,
        crc32=f.crc32,
        pickle_scan=f.pickle_scan,
        virus_scan=f.virus_scan,
        autov1=f.autov1,
        autov3=f.autov3,
        size_type=f.size,
        pickle_scan_message=f.pickle_scan_message,
        virus_scan_message=f.virus_scan_message,
        scanned_at=f.scanned_at,
    )
