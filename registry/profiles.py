"""Signer profiles in the registry: named, content-hashed settings.

The signer defines the profiles it can run; the registry only stores them. ``PAPER_SETTINGS``
are the published reference settings (DESIGN §1), also recorded for imported signatures.
"""
from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from sqlmodel import Session

from registry.errors import NotFound
from registry.models import SignerProfile, utcnow

PAPER_SETTINGS: dict = {
    "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
    "clip_model": "ViT-B-32-quickgelu",
    "clip_pretrained": "openai",
    "feature_space": "raw image features (unnormalized), d=512",
    "steps": 25,
    "guidance_scale": 5.0,
    "width": 1024,
    "height": 1024,
    "dtype": "float16",
    "scheduler": "EulerDiscreteScheduler",
    "lora_scale": 1.0,
    "seeds": {"start": 42, "count": 16},
    "prompt_set": {"name": "carlos-reference", "size": 280, "layout": "10 categories x 35 subcategories x 8"},
    "query_prompt_set": {"name": "carlos-reference-retrieval", "size": 280},
    "trigger_words": "append ', w1, w2' to the LoRA branch prompt",
    "filters": {"max_strength": 9.8, "min_consistency": 0.041},
}

IMPORTED_PROFILE_NAME = "carlos-published"


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def profile_hash(name: str, settings: dict) -> str:
    return hashlib.sha256(canonical_json({"name": name, "settings": settings}).encode()).hexdigest()


def get_or_create_profile(session: Session, name: str, settings: dict) -> SignerProfile:
    digest = profile_hash(name, settings)
    found = session.exec(sa.select(SignerProfile).where(SignerProfile.hash == digest)).scalars().first()
    if found is not None:
        return found
    profile = SignerProfile(name=name, hash=digest, settings=settings, created_at=utcnow())
    session.add(profile)
    session.flush()
    return profile


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
