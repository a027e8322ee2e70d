"""The signer queue as one document: per profile and kind the job counts by state, the base
cache, running jobs with their heartbeat age, and dead jobs with their reasons."""

from __future__ import annotations

import sqlalchemy as sa

from registry.models import BaseCache, SignerProfile, SignJob, Version
from registry.queue import db_now_sql
from registry.states import JobState

STATES = tuple(JobState)


def queue_status(session, *, limit: int = 20) -> dict:
    profiles = {p.id: p for p in session.execute(sa.select(SignerProfile)).scalars()}
    return {
        "profiles": _profile_summaries(session, profiles),
        "running": _running_jobs(session, profiles),
        "dead": _dead_jobs(session, profiles, limit),
    }


def _no_jobs() -> dict:
    return {"lora": dict.fromkeys(STATES, 0), "base": dict.fromkeys(STATES, 0)}


def _profile_summaries(session, profiles: dict) -> list[dict]:
    """Per profile with jobs or a base cache: job counts per kind and state, and the base cache."""
    counts = session.execute(
        sa.select(SignJob.profile_id, SignJob.kind, SignJob.state, sa.func.count()).group_by(
            SignJob.profile_id, SignJob.kind, SignJob.state
        )
    ).all()
    caches = {c.profile_id: c for c in session.execute(sa.select(BaseCache)).scalars()}
    per: dict[int, dict] = {}
    for pid, kind, state, n in counts:
        jobs = per.setdefault(pid, _no_jobs())
        jobs.setdefault(kind, dict.fromkeys(STATES, 0))[state] = int(n)
    out = []
    for pid in sorted(set(per) | set(caches)):
        p = profiles[pid]
        jobs = per.get(pid, _no_jobs())
        base = _base_cache_state(caches.get(pid), jobs.get("base", {}))
        out.append({"id": pid, "name": p.name, "hash": p.hash, "jobs": jobs, "base_cache": base})
    return out


def _base_cache_state(cache, base_jobs: dict) -> dict:
    """``ready`` with the cache's size, else what its base job is doing (or ``missing``)."""
    if cache is not None:
        return {
            "state": "ready",
            "n_samples": cache.n_samples,
            "dim": cache.dim,
            "created_at": cache.created_at.isoformat() if cache.created_at else None,
        }
    state = next((s for s in ("running", "queued", "dead") if base_jobs.get(s)), "missing")
    return {
        "state": {"running": "computing", "queued": "queued", "dead": "failed"}.get(state, state)
    }


def _job_fields(job, profiles: dict) -> dict:
    """What the running and the dead lists both say of a job."""
    return {
        "job_id": job.id,
        "profile": profiles[job.profile_id].name,
        "kind": job.kind,
        "version_id": job.version_id,
    }


def _running_jobs(session, profiles: dict) -> list[dict]:
    now = session.execute(
        sa.text(f"SELECT {db_now_sql(session.get_bind().dialect.name)}")
    ).scalar_one()
    return [
        {
            **_job_fields(j, profiles),
            "owner": j.lease_owner,
            "attempts": j.attempts,
            "heartbeat_age_s": round(float(now) - j.heartbeat_at, 1) if j.heartbeat_at else None,
        }
        for j in session.execute(
            sa.select(SignJob).where(SignJob.state == JobState.RUNNING).order_by(SignJob.id)
        ).scalars()
    ]


def _dead_jobs(session, profiles: dict, limit: int) -> list[dict]:
    """The latest ``limit`` dead jobs, newest first, with their version's name and last error."""
    dead_rows = session.execute(
        sa.select(SignJob, Version.name)
        .outerjoin(Version, Version.id == SignJob.version_id)
        .where(SignJob.state == JobState.DEAD)
        .order_by(SignJob.finished_at.desc(), SignJob.id.desc())
        .limit(limit)
    ).all()
    return [
        {
            **_job_fields(j, profiles),
            "name": name,
            "attempts": j.attempts,
            "reason": j.last_error,
            "finished_at": j.finished_at.isoformat() if j.finished_at else None,
        }
        for j, name in dead_rows
    ]
