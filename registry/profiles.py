"""Signer profiles in the registry: named, content-hashed settings.

The signer defines the profiles it can run; the registry only stores them. Identity (hash,
reference settings) lives in ``registry.profile_identity``.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from registry.errors import NotFound
from registry.models import SignerProfile, utcnow
from registry.profile_identity import profile_hash

IMPORTED_PROFILE_NAME = "carlos-published"


def get_or_create_profile(session: Session, name: str, settings: dict) -> SignerProfile:
    digest = profile_hash(name, settings)
    found = session.exec(sa.select(SignerProfile).where(SignerProfile.hash == digest)).scalars().first()
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
    found = session.exec(sa.select(SignerProfile).where(SignerProfile.name == name)
                         .order_by(SignerProfile.id)).scalars().first()
    if found is None:
        return get_or_create_profile(session, name, settings)
    if found.hash != digest:
        found.hash, found.settings = digest, settings
        session.flush()
    return found


def find_profile(session: Session, name_or_hash: str) -> SignerProfile:
    """The newest profile with this name, or the one whose hash starts with the given prefix."""
    stmt = sa.select(SignerProfile).where(SignerProfile.name == name_or_hash).order_by(SignerProfile.id.desc())
    found = session.exec(stmt).scalars().first()
    if found is None and len(name_or_hash) >= 8:
        stmt = sa.select(SignerProfile).where(SignerProfile.hash.startswith(name_or_hash.lower()))
        found = session.exec(stmt).scalars().first()
    if found is None:
        names = sorted(set(session.exec(sa.select(SignerProfile.name)).scalars().all()))
        known = ", ".join(names) if names else "none yet"
        raise NotFound(f"no signer profile {name_or_hash!r} in the registry (known: {known})")
    return found
