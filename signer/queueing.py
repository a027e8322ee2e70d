"""The signer's side of the job queue: what gets a signing job, and what a job is signed from.

Contract:
- ``enqueue_lora(session, queue, profile_id, version_id)`` queues the LoRA job and, the first
  time a profile is used, its ``base`` job (priority above LoRA jobs): the base branch is one
  leased job per profile for the whole fleet. No job is queued when the version is signed
  already from the same file, or when ``reuse_signature`` gives it the signature its file has.
- ``reuse_signature`` copies a same-file signature (same SHA-256, same profile, same LoRA-branch
  trigger suffix) as ``source='reused'``, naming the version signed in ``reused_from``.
- ``verified_file`` is the file a version is signed from; ``trigger_list`` its trigger words as
  the reference reads them.
"""

from __future__ import annotations

import sqlalchemy as sa

from registry.models import File, Signature, SignJob, Version
from registry.queue import JobQueue
from registry.signatures import save_signature as registry_save_signature
from registry.states import FileState
from registry.vectors import from_blob

BASE_PRIORITY = 100


def enqueue_lora(
    session, queue: JobQueue, profile_id: int, version_id: int, *, payload: dict | None = None
) -> bool:
    """Queue a LoRA job; False when one exists, or when a signature of the same file applies (reused)."""
    if (
        signed_already(session, profile_id, version_id)
        or reuse_signature(session, profile_id, version_id) is not None
    ):
        return False
    queue.enqueue(session, profile_id=profile_id, kind="base", priority=BASE_PRIORITY)
    return queue.enqueue(session, profile_id=profile_id, version_id=version_id, payload=payload)


def signed_already(session, profile_id: int, version_id: int) -> bool:
    """The version has a signature under the profile for the file it would be signed from (or one that
    names no file: imported), so a job would only repeat work."""
    sig = session.execute(
        sa.select(Signature.file_sha256).where(
            Signature.version_id == version_id, Signature.profile_id == profile_id
        )
    ).first()
    if sig is None:
        return False
    f = verified_file(session, version_id)
    return sig.file_sha256 is None or f is None or f.sha256 == sig.file_sha256


def unsigned_verified_versions(session, profile_id: int) -> list[int]:
    """Versions with a verified local file and no signature under the profile, ascending."""
    signed = sa.select(Signature.version_id).where(Signature.profile_id == profile_id)
    return sorted(
        session.execute(
            sa.select(sa.distinct(File.version_id)).where(
                File.state == FileState.VERIFIED,
                File.local_path.is_not(None),
                File.version_id.not_in(signed),
            )
        ).scalars()
    )


def reuse_signature(session, profile_id: int, version_id: int) -> Signature | None:
    """Give a version the signature its file (same SHA-256) already has under this profile.

    The signature was made from the same bytes with the same settings; only the trigger words can
    differ between two versions of one file, so it applies only when the LoRA-branch suffix it
    recorded is the one this version gets. The copy says ``source='reused'`` and, in its
    estimates, ``reused_from`` (the version signed). None when nothing applies or the version
    already has a signature under the profile.
    """
    if (
        session.execute(
            sa.select(Signature.id).where(
                Signature.version_id == version_id, Signature.profile_id == profile_id
            )
        ).first()
        is not None
    ):
        return None
    f = verified_file(session, version_id) or _hashed_file(session, version_id)
    if f is None or f.sha256 is None:
        return None
    suffix = _lora_branch_suffix(session, profile_id, version_id)
    if suffix is None:
        return None
    for src in session.execute(
        sa.select(Signature)
        .where(
            Signature.file_sha256 == f.sha256,
            Signature.profile_id == profile_id,
            Signature.version_id != version_id,
            Signature.source != "reused",
        )
        .order_by(Signature.id)
    ).scalars():
        if (src.estimates or {}).get("trigger_suffix") == suffix:
            return _copy_signature(session, src, version_id)
    return None


def _hashed_file(session, version_id: int) -> File | None:
    """Any file of the version whose SHA-256 is known, the primary first."""
    return (
        session.execute(
            sa.select(File)
            .where(File.version_id == version_id, File.sha256.is_not(None))
            .order_by(File.primary.desc(), File.id)
        )
        .scalars()
        .first()
    )


def _lora_branch_suffix(session, profile_id: int, version_id: int) -> str | None:
    """The trigger suffix the profile appends to this version's LoRA-branch prompts (None when the
    version or the profile is unknown)."""
    from registry.models import SignerProfile
    from signer.engine import trigger_suffix

    version = session.get(Version, version_id)
    profile = session.get(SignerProfile, profile_id)
    if version is None or profile is None:
        return None
    return trigger_suffix(
        trigger_list(version), (profile.settings or {}).get("trigger_words", "append")
    )


def _copy_signature(session, src: Signature, version_id: int) -> Signature:
    row = registry_save_signature(
        session,
        version_id=version_id,
        profile_id=src.profile_id,
        direction=from_blob(src.direction, src.dim),
        strength=src.strength,
        consistency=src.consistency,
        n_samples=src.n_samples,
        valid=src.valid,
        flags=list(src.flags or []),
        estimates={**(src.estimates or {}), "reused_from": src.version_id},
        file_sha256=src.file_sha256,
        ensemble_path=src.ensemble_path,
        job_id=None,
        source="reused",
        existing=None,
    )
    session.flush()
    return row


def find_jobs(session, profile_id: int, version_ids: list[int]) -> dict[int, SignJob]:
    rows = (
        session.execute(
            sa.select(SignJob).where(
                SignJob.profile_id == profile_id,
                SignJob.kind == "lora",
                SignJob.version_id.in_(version_ids),
            )
        )
        .scalars()
        .all()
    )
    return {j.version_id: j for j in rows}


def base_job(session, profile_id: int) -> SignJob | None:
    return (
        session.execute(
            sa.select(SignJob).where(SignJob.profile_id == profile_id, SignJob.kind == "base")
        )
        .scalars()
        .first()
    )


def verified_file(session, version_id: int) -> File | None:
    """The file to sign for a version: a verified one with a local copy, the primary first."""
    return (
        session.execute(
            sa.select(File)
            .where(
                File.version_id == version_id,
                File.state == FileState.VERIFIED,
                File.local_path.is_not(None),
            )
            .order_by(File.primary.desc(), File.id)
        )
        .scalars()
        .first()
    )


def trigger_list(version) -> list[str] | None:
    """A version's trigger words as the reference reads them: the ``trainedWords`` entries in order,
    or ``None`` when Civitai's payload has no list (missing or null; the reference then appends ", ")."""
    from registry.catalog import words_missing

    if version.source == "civitai" and words_missing(version.raw):
        return None
    return [str(w) for w in (version.trained_words or [])]
