"""Which job one worker claims next.

Contract:
- A profile is run only if its registry row matches this machine's definition (same name and
  hash; ``--profile`` narrows them further); jobs of other profiles are left for workers that
  have them.
- ``base`` jobs come first; a ``lora`` job is claimed only once its profile's base cache exists
  (or its base job is dead: the LoRA job then fails with that reason), jobs of the profile whose
  engine is loaded before others. With ``job_ids``, only those jobs are claimed.
- ``requested_pending`` and ``waiting_for_base`` tell the worker whether waiting can still bring
  it work.
"""

from __future__ import annotations

import sqlalchemy as sa

from registry.models import BaseCache, SignerProfile, SignJob
from registry.queue import JobQueue, Lease
from registry.states import JobState
from signer.errors import ProfileError
from signer.profiles import Profile, load_profile


class JobClaimer:
    def __init__(
        self,
        db,
        settings,
        queue: JobQueue,
        owner: str,
        *,
        profile_names: list[str] | None,
        job_ids: list[int] | None,
    ):
        self.db, self.settings, self.queue, self.owner = db, settings, queue, owner
        self.profile_names, self.job_ids = profile_names, job_ids
        self.profiles: dict[int, Profile | None] = {}  # registry id -> this machine's definition

    def runnable_profiles(self) -> dict[int, Profile]:
        """Registry profiles this machine can run: same name and hash as its own definition."""
        with self.db.read() as s:
            rows = s.execute(
                sa.select(SignerProfile.id, SignerProfile.name, SignerProfile.hash)
            ).all()
        out = {}
        for pid, name, digest in rows:
            if self.profile_names is not None and name not in self.profile_names:
                continue
            if pid not in self.profiles:
                try:
                    p = load_profile(name, self.settings)
                    self.profiles[pid] = p if p.hash == digest else None
                except ProfileError:
                    self.profiles[pid] = None
            if self.profiles[pid] is not None:
                out[pid] = self.profiles[pid]
        return out

    def claim(self, loaded_hash: str | None) -> Lease | None:
        """The next job, or None; ``loaded_hash``: the profile whose engine is loaded, if any."""
        runnable = self.runnable_profiles()
        if not runnable:
            return None
        ids = list(runnable)
        kw = {"job_ids": self.job_ids} if self.job_ids is not None else {}
        if self.job_ids == []:
            return None
        lease = self.queue.claim(self.owner, kinds=["base"], profile_ids=ids, **kw)
        if lease is not None:
            return lease
        with self.db.read() as s:
            ready = _profiles_ready_for_lora(s, ids)
        preferred = [pid for pid in ready if runnable[pid].hash == loaded_hash]
        for group in (preferred, sorted(ready)):
            if group:
                lease = self.queue.claim(self.owner, kinds=["lora"], profile_ids=group, **kw)
                if lease is not None:
                    return lease
        return None

    def requested_pending(self) -> bool:
        """Some of the requested ``job_ids`` are still queued or running."""
        with self.db.read() as s:
            return _any_pending(s, self.job_ids)

    def waiting_for_base(self) -> bool:
        """A base job is running elsewhere while LoRA jobs of that profile wait for it."""
        ids = list(self.runnable_profiles())
        if not ids:
            return False
        with self.db.read() as s:
            return _lora_waiting_for_base(s, ids)


def _profiles_ready_for_lora(session, profile_ids: list[int]) -> set[int]:
    """Profiles whose LoRA jobs may be claimed: the base cache exists, or the base job is dead (the
    LoRA jobs then fail with its reason)."""
    ready = set(
        session.execute(
            sa.select(BaseCache.profile_id).where(BaseCache.profile_id.in_(profile_ids))
        ).scalars()
    )
    return ready | set(
        session.execute(
            sa.select(SignJob.profile_id).where(
                SignJob.kind == "base",
                SignJob.state == JobState.DEAD,
                SignJob.profile_id.in_(profile_ids),
            )
        ).scalars()
    )


def _any_pending(session, job_ids: list[int]) -> bool:
    """Any of these jobs is still queued or running."""
    return bool(
        session.execute(
            sa.select(sa.func.count())
            .select_from(SignJob)
            .where(
                SignJob.id.in_(job_ids),
                SignJob.state.in_([JobState.QUEUED, JobState.RUNNING]),
            )
        ).scalar_one()
    )


def _lora_waiting_for_base(session, profile_ids: list[int]) -> bool:
    """A base job of one of these profiles is queued or running while LoRA jobs of it wait."""
    running = set(
        session.execute(
            sa.select(SignJob.profile_id).where(
                SignJob.kind == "base",
                SignJob.state.in_([JobState.RUNNING, JobState.QUEUED]),
                SignJob.profile_id.in_(profile_ids),
            )
        ).scalars()
    )
    if not running:
        return False
    return bool(
        session.execute(
            sa.select(sa.func.count())
            .select_from(SignJob)
            .where(
                SignJob.kind == "lora",
                SignJob.state == JobState.QUEUED,
                SignJob.profile_id.in_(running),
            )
        ).scalar_one()
    )
