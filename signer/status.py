"""The signer queue as one document: per profile and kind the job counts by state, the base
cache, running jobs with their heartbeat age, and dead jobs with their reasons."""

from __future__ import annotations

import sqlalchemy as sa

from registry.models import BaseCache, SignerProfile, SignJob, Version
from registry.queue import db_now_sql
from registry.states import JobState

STATES = tuple(JobState)


def queue_status(session, *, limit: int = 20) -> dict:
    counts = session.execute(
        sa.select(SignJob.profile_id, SignJob.kind, SignJob.state, sa.func.count()).group_by(
            SignJob.profile_id, SignJob.kind, SignJob.state
        )
    ).all()
    profiles = {p.id: p for p in session.execute(sa.select(SignerProfile)).scalars()}
    caches = {c.profile_id: c for c in session.execute(sa.select(BaseCache)).scalars()}
    per: dict[int, dict] = {}
    for pid, kind, state, n in counts:
        jobs = per.setdefault(
            pid, {"lora": dict.fromkeys(STATES, 0), "base": dict.fromkeys(STATES, 0)}
        )
        jobs.setdefault(kind, dict.fromkeys(STATES, 0))[state] = int(n)
    out_profiles = []
    for pid in sorted(set(per) | set(caches)):
        p = profiles[pid]
        jobs = per.get(pid, {"lora": dict.fromkeys(STATES, 0), "base": dict.fromkeys(STATES, 0)})
        cache = caches.get(pid)
        if cache is not None:
            base = {
                "state": "ready",
                "n_samples": cache.n_samples,
                "dim": cache.dim,
                "created_at": cache.created_at.isoformat() if cache.created_at else None,
            }
        else:
            b = jobs.get("base", {})
            state = next((s for s in ("running", "queued", "dead") if b.get(s)), "missing")
            base = {
                "state": {"running": "computing", "queued": "queued", "dead": "failed"}.get(
                    state, state
                )
            }
        out_profiles.append(
            {"id": pid, "name": p.name, "hash": p.hash, "jobs": jobs, "base_cache": base}
        )
    now = session.execute(
        sa.text(f"SELECT {db_now_sql(session.get_bind().dialect.name)}")
    ).scalar_one()
    running = [
        {
            "job_id": j.id,
            "profile": profiles[j.profile_id].name,
            "kind": j.kind,
            "version_id": j.version_id,
            "owner": j.lease_owner,
            "attempts": j.attempts,
            "heartbeat_age_s": round(float(now) - j.heartbeat_at, 1) if j.heartbeat_at else None,
        }
        for j in session.execute(
            sa.select(SignJob).where(SignJob.state == JobState.RUNNING).order_by(SignJob.id)
        ).scalars()
    ]
    dead_rows = session.execute(
        sa.select(SignJob, Version.name)
        .outerjoin(Version, Version.id == SignJob.version_id)
        .where(SignJob.state == JobState.DEAD)
        .order_by(SignJob.finished_at.desc(), SignJob.id.desc())
        .limit(limit)
    ).all()
    dead = [
        {
            "job_id": j.id,
            "profile": profiles[j.profile_id].name,
            "kind": j.kind,
            "version_id": j.version_id,
            "name": name,
            "attempts": j.attempts,
            "reason": j.last_error,
            "finished_at": j.finished_at.isoformat() if j.finished_at else None,
        }
        for j, name in dead_rows
    ]
    return {"profiles": out_profiles, "running": running, "dead": dead}
