"""What signing produces, kept in the registry and the artifact store: base caches, signatures
and sample images.

Contract:
- ``save_base`` writes the per-sample base features (float32 ``.npz``: ``features``,
  ``degenerate``) to the artifact store and the ``BaseCache`` row (with the mean base image
  feature); ``load_base`` reads them back. ``base_mean_feature(session, profile_id)`` is the mean
  CLIP image feature of the profile's base images (search subtracts it from image queries), or
  None before the base branch ran.
- ``save_signature`` writes the float16 ensemble artifact and upserts the ``Signature`` row;
  callers do it in the transaction that completes the job.
- ``save_sample_images`` keeps a branch's first sample images (content-addressed WebP).
"""

from __future__ import annotations

import io

import numpy as np
import sqlalchemy as sa

from registry import __version__
from registry.artifacts import ArtifactStore
from registry.images import THUMB_KIND
from registry.models import BaseCache, SampleImage, Signature, utcnow
from registry.signatures import save_signature as registry_save_signature
from registry.vectors import from_blob, to_blob
from signer.engine import BaseBranch, SignOutcome

# ---------------------------------------------------------------- base cache


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_base(
    session, artifacts: ArtifactStore, profile_id: int, base: BaseBranch, job_id: int | None
) -> BaseCache:
    rel = artifacts.put_bytes(
        "base",
        _npz_bytes(
            features=base.features.astype(np.float32),
            degenerate=base.degenerate.astype(bool),
            clip_key=np.array(base.clip_key),
        ),
        ".npz",
    )
    row = (
        session.execute(sa.select(BaseCache).where(BaseCache.profile_id == profile_id))
        .scalars()
        .first()
    )
    if row is None:
        row = BaseCache(
            profile_id=profile_id, n_samples=0, dim=0, artifact_path="", mean_feature=b""
        )
        session.add(row)
    row.n_samples, row.dim = int(base.features.shape[0]), int(base.features.shape[1])
    row.artifact_path, row.mean_feature = rel, to_blob(base.mean_feature)
    row.job_id, row.created_at = job_id, utcnow()
    session.flush()
    save_sample_images(session, artifacts, profile_id, None, base.images)
    return row


def save_sample_images(
    session, artifacts: ArtifactStore, profile_id: int, version_id: int | None, images: dict
) -> None:
    """Keep a branch's first sample images (content-addressed WebP), replacing what that branch kept before."""
    session.execute(
        sa.delete(SampleImage).where(
            SampleImage.profile_id == profile_id,
            SampleImage.version_id.is_(None)
            if version_id is None
            else SampleImage.version_id == version_id,
        )
    )
    for position, item in sorted(images.items()):
        rel = artifacts.put_bytes(THUMB_KIND, item["webp"], ".webp")
        session.add(
            SampleImage(
                profile_id=profile_id,
                version_id=version_id,
                position=int(position),
                prompt=item["prompt"][:2000],
                artifact_path=rel,
                width=int(item["width"]),
                height=int(item["height"]),
                created_at=utcnow(),
            )
        )
    session.flush()


def base_cache_row(session, profile_id: int) -> BaseCache | None:
    return (
        session.execute(sa.select(BaseCache).where(BaseCache.profile_id == profile_id))
        .scalars()
        .first()
    )


def load_base(session, artifacts: ArtifactStore, profile_id: int) -> BaseBranch | None:
    row = base_cache_row(session, profile_id)
    if row is None or not artifacts.exists(row.artifact_path):
        return None
    with np.load(artifacts.path(row.artifact_path), allow_pickle=False) as z:
        return BaseBranch(
            z["features"].astype(np.float32), z["degenerate"].astype(bool), str(z["clip_key"])
        )


def base_mean_feature(session, profile_id: int) -> np.ndarray | None:
    """Mean CLIP image feature of the profile's base images (raw features), or None."""
    row = base_cache_row(session, profile_id)
    return None if row is None else from_blob(row.mean_feature, row.dim)


# ---------------------------------------------------------------- signatures


def save_signature(
    session,
    artifacts: ArtifactStore,
    *,
    version_id: int,
    profile_id: int,
    outcome: SignOutcome,
    file_sha256: str | None,
    job_id: int | None,
) -> Signature:
    buf = io.BytesIO()
    np.save(buf, outcome.ensemble.astype(np.float16), allow_pickle=False)
    rel = artifacts.put_bytes("ensemble", buf.getvalue(), ".npy")
    s = outcome.stats
    row = registry_save_signature(
        session,
        version_id=version_id,
        profile_id=profile_id,
        direction=s.direction,
        strength=float(s.strength),
        consistency=float(s.consistency),
        n_samples=int(s.n),
        valid=bool(outcome.valid),
        flags=list(outcome.flags),
        estimates={**dict(outcome.estimates), "code_version": __version__},
        file_sha256=file_sha256,
        ensemble_path=rel,
        job_id=job_id,
        source="signed",
    )
    session.flush()
    if outcome.images:
        save_sample_images(session, artifacts, profile_id, version_id, outcome.images)
    return row
