"""Signer profiles in the registry: named, content-hashed settings.

The signer defines the profiles it can run; the registry only stores them. Identity (hash,
reference settings) lives in ``registry.profile_identity``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from registry.errors import NotFound
from registry.models import Signature, SignerProfile, utcnow
from registry.profile_identity import profile_hash

IMPORTED_PROFILE_NAME = "carlos-published"


def get_or_create_profile(session: Session, name: str, settings: dict) -> SignerProfile:
    digest = profile_hash(name, settings)
    found = (
        session.exec(sa.select(SignerProfile).where(SignerProfile.hash == digest)).scalars().first()
    )
    if found is not None:
        return found
    profile = SignerProfile(name=name, hash=digest, settings=settings, created_at=utcnow())
    session.add(profile)
    session.flush()
    return profile


def adopt_profile(session: Session, name: str, settings: dict) -> SignerProfile:
    """The one row named ``name``, its settings brought up to ``settings`` (for rows that describe
    data from elsewhere, such as the imported published signatures, whose record may be reworded)."""
    digest = profile_hash(name, settings)
    found = (
        session.exec(
            sa.select(SignerProfile).where(SignerProfile.name == name).order_by(SignerProfile.id)
        )
        .scalars()
        .first()
    )
    if found is None:
        return get_or_create_profile(session, name, settings)
    if found.hash != digest:
        found.hash, found.settings = digest, settings
        session.flush()
    return found


def default_profile(session: Session, configured: str, name: str | None = None) -> SignerProfile:
    """The profile whose signatures a reading command uses (``registry.settings.PROFILE_HELP``):
    ``name`` when given; else the configured profile when it has signatures; else the profile with
    the most signatures (the newest on a tie). Raises NotFound when nothing is signed."""
    if name:
        return find_profile(session, name)
    counts = dict(
        session.execute(
            sa.select(Signature.profile_id, sa.func.count()).group_by(Signature.profile_id)
        ).all()
    )
    if not counts:
        raise NotFound(
            "no signed LoRAs in the registry yet: sign some (`carlos-reg sign`) "
            "or import the published ones (`carlos-reg import carlos FILE`)"
        )
    rows = {
        p.id: p
        for p in session.execute(
            sa.select(SignerProfile).where(SignerProfile.id.in_(list(counts)))
        ).scalars()
    }
    preferred = [p for p in rows.values() if p.name == configured]
    if preferred:
        return max(preferred, key=lambda p: p.id)
    return rows[max(counts, key=lambda pid: (counts[pid], pid))]


def find_profile(session: Session, name_or_hash: str) -> SignerProfile:
    """The newest profile with this name, or the one whose hash starts with the given prefix."""
    stmt = (
        sa.select(SignerProfile)
        .where(SignerProfile.name == name_or_hash)
        .order_by(SignerProfile.id.desc())
    )
    found = session.exec(stmt).scalars().first()
    if found is None and len(name_or_hash) >= 8:
        stmt = sa.select(SignerProfile).where(SignerProfile.hash.startswith(name_or_hash.lower()))
        found = session.exec(stmt).scalars().first()
    if found is None:
        names = sorted(set(session.exec(sa.select(SignerProfile.name)).scalars().all()))
        known = ", ".join(names) if names else "none yet"
        raise NotFound(f"no signer profile {name_or_hash!r} in the registry (known: {known})")
    return found
