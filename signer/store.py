"""The signer's registry side: base caches, signatures, local LoRA files, enqueueing.

Contract:
- ``enqueue_lora(session, queue, profile_id, version_id)`` queues the LoRA job and, the first
  time a profile is used, its ``base`` job (priority above LoRA jobs): the base branch is one
  leased job per profile for the whole fleet.
- ``save_base`` writes the per-sample base features (float32 ``.npz``: ``features``,
  ``degenerate``) to the artifact store and the ``BaseCache`` row (with the mean base image
  feature); ``load_base`` reads them back. ``base_mean_feature(session, profile_id)`` is the mean
  CLIP image feature of the profile's base images (search subtracts it from image queries), or
  None before the base branch ran.
- ``save_signature`` writes the float16 ensemble artifact and upserts the ``Signature`` row;
  callers do it in the transaction that completes the job.
- ``register_local_files`` turns local files into registry entries: negative version ids,
  ``source='local'``, the file copied into the artifact store by SHA-256 (one version per
  distinct file content); pickle files are recorded as unsupported and never copied or opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from registry import __version__
from registry.artifacts import ArtifactStore
from registry.images import THUMB_KIND
from registry.models import BaseCache, File, SampleImage, Signature, SignJob, Version, utcnow
from registry.queries import next_local_version_id
from registry.queue import JobQueue
from registry.signatures import save_signature as registry_save_signature
from registry.states import FileState
from registry.vectors import from_blob, to_blob
from signer.engine import BaseBranch, SignOutcome
from signer.validate import PICKLE_SUFFIXES

BASE_PRIORITY = 100
LORA_SUFFIXES = {".safetensors"} | PICKLE_SUFFIXES


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


def reuse_signature(session, profile_id: int, version_id: int) -> Signature | None:
    """Give a version the signature its file (same SHA-256) already has under this profile.

    The signature was made from the same bytes with the same settings; only the trigger words can
    differ between two versions of one file, so it applies only when the LoRA-branch suffix it
    recorded is the one this version gets. The copy says ``source='reused'`` and, in its
    estimates, ``reused_from`` (the version signed). None when nothing applies or the version
    already has a signature under the profile.
    """
    from registry.models import SignerProfile
    from signer.engine import trigger_suffix

    if (
        session.execute(
            sa.select(Signature.id).where(
                Signature.version_id == version_id, Signature.profile_id == profile_id
            )
        ).first()
        is not None
    ):
        return None
    f = (
        verified_file(session, version_id)
        or session.execute(
            sa.select(File)
            .where(File.version_id == version_id, File.sha256.is_not(None))
            .order_by(File.primary.desc(), File.id)
        )
        .scalars()
        .first()
    )
    version = session.get(Version, version_id)
    profile = session.get(SignerProfile, profile_id)
    if f is None or f.sha256 is None or version is None or profile is None:
        return None
    suffix = trigger_suffix(
        trigger_list(version), (profile.settings or {}).get("trigger_words", "append")
    )
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
        if (src.estimates or {}).get("trigger_suffix") != suffix:
            continue
        row = registry_save_signature(
            session,
            version_id=version_id,
            profile_id=profile_id,
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
    return None


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


# ---------------------------------------------------------------- local files


@dataclass
class LocalEntry:
    path: Path
    version_id: int
    file_id: int
    sha256: str
    state: str  # verified | unsupported
    reason: str | None = None
    triggers_changed: bool = (
        False  # an existing local version got other trigger words: sign it again
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def collect_paths(args: list[Path]) -> tuple[list[Path], list[Path]]:
    """LoRA-like files named or inside the named folders (not recursive); and the others skipped."""
    files, skipped = [], []
    for arg in args:
        entries = sorted(p for p in arg.iterdir() if p.is_file()) if arg.is_dir() else [arg]
        for p in entries:
            (files if p.suffix.lower() in LORA_SUFFIXES else skipped).append(p)
    return files, skipped


def new_local_version(
    session,
    *,
    name: str,
    file_name: str,
    size: int,
    digest: str,
    state: str,
    error: str | None = None,
    local_path: str | None = None,
    fmt: str | None = None,
    trigger_words: list[str] | None = None,
) -> tuple[int, File]:
    """A new local LoRA version (the next negative id) with its one file; names are display text only."""
    vid = next_local_version_id(session)
    now = utcnow()
    session.add(
        Version(
            id=vid,
            name=name[:200],
            source="local",
            trained_words=list(trigger_words or []),
            first_seen_at=now,
            updated_at=now,
        )
    )
    session.flush()
    f = File(
        version_id=vid,
        name=file_name[:255],
        size_bytes=size,
        primary=True,
        sha256=digest,
        updated_at=now,
        state=state,
        error=error,
        format=fmt,
        local_path=local_path,
        verified_at=now if state == FileState.VERIFIED else None,
    )
    session.add(f)
    session.flush()
    return vid, f


def place_file(
    artifacts: ArtifactStore, path: Path, digest: str, *, copy: bool = True
) -> str | None:
    """The file's place in the artifact store (``lora/…/<sha256>.safetensors``), made if missing: a
    hardlink when the store is on the same filesystem, else a copy when ``copy``, else None.
    The worker re-verifies the SHA-256 before signing, so a linked file edited in place is refused."""
    rel = artifacts.relative_path("lora", digest, ".safetensors")
    if artifacts.exists(rel):
        return rel
    final = artifacts.path(rel)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-link-{os.getpid()}-{digest[:16]}"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(path, tmp, follow_symlinks=True)
        os.replace(tmp, final)
        return rel
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if not copy:
        return None
    with path.open("rb") as src, artifacts.atomic_writer(rel) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return rel


def _container_problem(path: Path) -> str | None:
    """Why a local file is not a well-formed safetensors container (the crawler's own check), or None."""
    from crawler import stfile
    from signer.validate import MAX_FILE_BYTES

    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return f"file is {size / 2**30:.1f} GiB, over the {MAX_FILE_BYTES / 2**30:.1f} GiB limit for a LoRA"
    try:
        stfile.read_header(path)
    except stfile.InvalidSafetensors as exc:
        return f"not a valid safetensors file: {exc}"
    return None


def register_local_files(
    session, artifacts: ArtifactStore, paths: list[Path], *, trigger_words: list[str] | None = None
) -> list[LocalEntry]:
    out = []
    for path in paths:
        digest = sha256_file(path)
        pickled = path.suffix.lower() in PICKLE_SUFFIXES
        found = (
            session.execute(
                sa.select(File)
                .join(Version, Version.id == File.version_id)
                .where(File.sha256 == digest, Version.source == "local")
            )
            .scalars()
            .first()
        )
        if found is not None:
            version = session.get(Version, found.version_id)
            changed = trigger_words is not None and list(trigger_words) != list(
                version.trained_words or []
            )
            if changed:
                version.trained_words = list(trigger_words)
            if (
                found.state == FileState.VERIFIED and found.local_path is None
            ):  # a scanned file used in place until now
                found.local_path = place_file(artifacts, path, digest)
            out.append(
                LocalEntry(
                    path, found.version_id, found.id, digest, found.state, found.error, changed
                )
            )
            continue
        problem = None if pickled else _container_problem(path)
        kind: dict = {"state": FileState.UNSUPPORTED, "error": problem}
        if pickled:
            kind.update(
                fmt="PickleTensor",
                error=(
                    f"pickle format ({path.suffix.lower()}): never unpickled (it can run code); only .safetensors "
                    "is signed"
                ),
            )
        elif not problem:  # checked before a byte is copied: the store holds only well-formed files
            rel = artifacts.relative_path("lora", digest, ".safetensors")
            if not artifacts.exists(rel):
                with path.open("rb") as src, artifacts.atomic_writer(rel) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            kind = {"state": FileState.VERIFIED, "fmt": "SafeTensor", "local_path": rel}
        vid, f = new_local_version(
            session,
            name=path.stem,
            file_name=path.name,
            size=path.stat().st_size,
            digest=digest,
            trigger_words=trigger_words,
            **kind,
        )
        out.append(LocalEntry(path, vid, f.id, digest, f.state, f.error))
    return out


def trigger_list(version) -> list[str] | None:
    """A version's trigger words as the reference reads them: the ``trainedWords`` entries in order,
    or ``None`` when Civitai's payload has no list (missing or null; the reference then appends ", ")."""
    from registry.catalog import words_missing

    if version.source == "civitai" and words_missing(version.raw):
        return None
    return [str(w) for w in (version.trained_words or [])]
