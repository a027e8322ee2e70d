"""Signer profiles in the registry: named, content-hashed settings.

The signer defines the profiles it can run; the registry only stores them. ``PAPER_SETTINGS``
are the published reference settings (docs/architecture.md, The method), also recorded for imported signatures.
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
    "noise": "image i of a prompt: row i % 4 of the float16 batch drawn from torch.manual_seed(42 + 4 * (i // 4))",
    "prompt_set": {"name": "carlos-reference-index", "version": "c284094", "size": 280,
                   "layout": "prompts_for_indexing(): the first 8 of each of 10 categories x 35 subcategories"},
    "query_prompt_set": {"name": "carlos-reference-query", "version": "c284094", "size": 280,
                         "layout": "prompts_for_retrieval(): the last 8 of each subcategory"},
    "trigger_words": "prompt += f', {w}' for every trainedWords entry; ', ' when the list is missing",
    "image_preprocess": "8-bit PNG, transformers CLIPProcessor (PIL bicubic to 224, centre crop)",
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
