"""Kept sample images (the signer's before/after pairs) and the authors' preview images, as the
web pages and the API show them.

Sample images are small WebP files in the artifact store (``thumb/ab/cd/<sha256>.webp``), served
by digest at ``/api/images/<sha256>.webp``: a URL made from a hash, never from a stored path.
Preview images are Civitai's URLs; whether a visitor's browser may load them is the operator's
choice (``CARLOS_REG_PREVIEWS``): ``off`` (default: counted, neither shown nor linked), ``link``
(links the visitor may follow) or ``show`` (loaded from the image host Civitai lists).
"""

from __future__ import annotations

import re

import sqlalchemy as sa

from registry.models import SampleImage

THUMB_KIND = "thumb"
PREVIEW_MODES = ("off", "link", "show")
_THUMB_PATH = re.compile(r"^thumb/[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})\.webp$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")


def image_url(artifact_path: str) -> str | None:
    m = _THUMB_PATH.match(artifact_path or "")
    return f"/api/images/{m.group(1)}.webp" if m else None


def thumb_relative_path(digest: str) -> str:
    return f"{THUMB_KIND}/{digest[:2]}/{digest[2:4]}/{digest}.webp"


def preview_mode(settings) -> str:
    mode = getattr(settings, "previews", "off")
    return mode if mode in PREVIEW_MODES else "off"


def sample_pairs(session, profile_id: int, version_id: int) -> list[dict]:
    """Before/after pairs of one version under one profile, in visiting order (base image or None)."""
    rows = (
        session.execute(
            sa.select(SampleImage)
            .where(
                SampleImage.profile_id == profile_id,
                sa.or_(SampleImage.version_id == version_id, SampleImage.version_id.is_(None)),
            )
            .order_by(SampleImage.position, SampleImage.id)
        )
        .scalars()
        .all()
    )
    base = {r.position: r for r in rows if r.version_id is None}
    return [
        {
            "position": r.position,
            "prompt": r.prompt,
            "width": r.width,
            "height": r.height,
            "lora": image_url(r.artifact_path),
            "base": image_url(base[r.position].artifact_path) if r.position in base else None,
        }
        for r in rows
        if r.version_id is not None
    ]


def first_thumbnails(
    session, version_ids: list[int], profile_id: int | None = None
) -> dict[int, str]:
    """The first kept LoRA-branch image of each version (of the given profile, else any)."""
    if not version_ids:
        return {}
    stmt = (
        sa.select(SampleImage.version_id, SampleImage.artifact_path)
        .where(SampleImage.version_id.in_(version_ids))
        .order_by(SampleImage.position.desc(), SampleImage.id.desc())
    )
    if profile_id is not None:
        stmt = stmt.where(SampleImage.profile_id == profile_id)
    out: dict[int, str] = {}
    for vid, path in session.execute(
        stmt
    ):  # the last one written per version is the lowest position
        url = image_url(path)
        if url:
            out[vid] = url
    return out


def previews_for_page(previews: list | None, mode: str) -> dict:
    """The author's previews as a page may use them under the operator's setting."""
    items = [p for p in previews or [] if isinstance(p, dict)]
    shown = [
        {
            "width": p.get("width"),
            "height": p.get("height"),
            "nsfw_level": p.get("nsfw_level"),
            "type": p.get("type"),
            **({"url": p["url"]} if mode != "off" else {}),
        }
        for p in items
    ]
    return {"mode": mode, "count": len(items), "items": shown}
