"""Why an unsigned LoRA version has no signature: its files and jobs, read in bulk for listings.

``registry.queries`` adds this to every unsigned listing row (``sign_status``) and words it for
one version (``unsigned_message``).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from registry.models import File, SignJob

# Why an unsigned version has no signature: files and jobs, in the order that decides.
SIGN_STATES = ("failed", "signing", "queued", "ready", "downloading", "deferred", "unsignable")


def sign_status(
    session: Session, version_ids: list[int], profile_id: int | None = None
) -> dict[int, dict[str, str | None]]:
    """``{version_id: {"state", "reason"}}`` for versions without a signature: ``failed`` (the job
    died; its error), ``signing``, ``queued``, ``ready`` (a verified file, not queued yet),
    ``downloading`` (a file still to fetch), ``deferred`` (early access) or ``unsignable`` (no file
    the signer can use; the file's reason). Jobs of ``profile_id`` only, when given."""
    out: dict[int, dict[str, str | None]] = {}
    for start in range(0, len(version_ids), 900):  # SQL parameter limits
        chunk = version_ids[start : start + 900]
        files: dict[int, list] = {}
        for vid, state, error, name in session.execute(
            sa.select(File.version_id, File.state, File.error, File.name)
            .where(File.version_id.in_(chunk))
            .order_by(File.primary.desc(), File.id)
        ):
            files.setdefault(vid, []).append((state, error, name))
        jobs = (
            sa.select(SignJob.version_id, SignJob.state, SignJob.last_error)
            .where(SignJob.kind == "lora", SignJob.version_id.in_(chunk))
            .order_by(SignJob.id)
        )
        if profile_id is not None:
            jobs = jobs.where(SignJob.profile_id == profile_id)
        job = {
            vid: (state, error) for vid, state, error in session.execute(jobs)
        }  # the newest job wins
        for vid in chunk:
            out[vid] = _one_status(files.get(vid, []), job.get(vid))
    return out


def _one_status(files: list, job: tuple | None) -> dict[str, str | None]:
    if job is not None and job[0] == "dead":
        return {
            "state": "failed",
            "reason": (job[1] or "").strip().splitlines()[0] if job[1] else None,
        }
    if job is not None and job[0] in ("running", "queued"):
        return {"state": "signing" if job[0] == "running" else "queued", "reason": None}
    states = [f[0] for f in files]
    for wanted, state in (
        ("verified", "ready"),
        ("pending", "downloading"),
        ("deferred", "deferred"),
    ):
        if wanted in states:
            return {"state": state, "reason": None}
    if not files:
        return {"state": "unsignable", "reason": "no files in the registry"}
    state, error, name = files[0]
    return {"state": "unsignable", "reason": f"{name}: {error or state}"}
