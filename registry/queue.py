"""The signer's job queue, on SQLite and PostgreSQL alike.

Lifecycle: ``queued`` → ``running`` (leased) → ``done`` | back to ``queued`` (retry) | ``dead``.

- ``enqueue`` is idempotent per dedupe key (one job per version and profile, one base job per
  profile).
- ``claim`` leases one job: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a single
  ``UPDATE … RETURNING`` inside ``BEGIN IMMEDIATE`` on SQLite. Expired leases are reclaimed by
  the same statement; an expired lease on the last attempt ends ``dead``.
- Every lease carries a random token (a fencing token). ``heartbeat``, ``complete``, ``fail`` and
  ``release`` act only while the token still holds; ``complete`` runs inside the caller's write
  transaction so the result and the completion commit or roll back together.
- Lease times use the database clock, so workers on machines with skewed clocks agree.
- The queue's own transactions (``claim``, ``heartbeat``, ``complete_with``, ``fail``,
  ``release``, ``reap``) ride out a database restart: transient connection errors are retried
  with capped backoff (``registry.retry``). Every retry is safe because the lease token fences
  it: a retried ``claim`` first looks for the lease its token may already hold (a COMMIT whose
  answer was lost), and ``complete_with`` finds a job already completed under its token and
  writes nothing a second time.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

import sqlalchemy as sa
from sqlmodel import Session

from registry.db import Database, insert_or_ignore
from registry.errors import LeaseLost
from registry.models import SignJob, utcnow
from registry.retry import RetryPolicy, retry_call
from registry.states import JobState

T = TypeVar("T")

DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_MAX_ATTEMPTS = 3
RETRY_BACKOFF_SECONDS = 30.0
RETRY_BACKOFF_CAP_SECONDS = 3600.0

_RETURNING = "id, kind, version_id, profile_id, attempts, max_attempts, payload, lease_expires_at"
_HELD_SQL = f"SELECT {_RETURNING} FROM sign_job WHERE lease_token = :token AND state = 'running'"


def db_now_sql(dialect: str) -> str:
    """SQL for 'now' in epoch seconds on the database clock (millisecond precision or better)."""
    if dialect == "postgresql":
        return "extract(epoch from clock_timestamp())::float8"
    return "((julianday('now') - 2440587.5) * 86400.0)"


def dedupe_key(kind: str, profile_id: int, version_id: int | None) -> str:
    return f"{kind}:{profile_id}" if version_id is None else f"{kind}:{profile_id}:{version_id}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Lease:
    job_id: int
    token: str
    owner: str
    kind: str
    version_id: int | None
    profile_id: int
    attempts: int
    max_attempts: int
    payload: dict | None
    expires_at: float


class JobQueue:
    def __init__(
        self,
        db: Database,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        backoff_seconds: float = RETRY_BACKOFF_SECONDS,
        retry: RetryPolicy | None = None,
    ):
        """``retry``: how the queue's transactions wait out a database outage [default: from
        ``$CARLOS_REG_DB_RETRY_SECONDS``]; ``backoff_seconds``: delay before a failed job's next try."""
        self.db = db
        self.lease_seconds = float(lease_seconds)
        self.backoff_seconds = float(backoff_seconds)
        # a failed job's next try: backoff_seconds, doubling per attempt, at most an hour; exact
        self.job_backoff = RetryPolicy(
            initial=self.backoff_seconds, cap=RETRY_BACKOFF_CAP_SECONDS, jitter=0.0, deadline=None
        )
        self.retry_policy = retry if retry is not None else RetryPolicy.from_env()
        # the retries' sleep; True ends them (a worker's stop)
        self.wait: Callable[[float], bool] | None = None
        self._now = db_now_sql(db.dialect)

    def retried(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` (one database step, safe to rerun), riding out a database outage with this
        queue's policy; ``self.wait`` (a worker's stop) cuts the wait short."""
        return retry_call(fn, what=what, policy=self.retry_policy, wait=self.wait)

    def _write_retried(self, fn: Callable[[Session], T], what: str) -> T:
        """``fn(session)`` in one write transaction, the whole transaction retried on an outage."""

        def attempt() -> T:
            with self.db.write() as session:
                return fn(session)

        return self.retried(attempt, what)

    # -------------------------------------------------------------- producing

    def enqueue(
        self,
        session: Session,
        *,
        profile_id: int,
        version_id: int | None = None,
        kind: str = "lora",
        priority: int = 0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        payload: dict | None = None,
    ) -> bool:
        """Add a job unless one exists for the same key (in any state). True if a job was added."""
        key = dedupe_key(kind, profile_id, version_id)
        values = dict(
            kind=kind,
            version_id=version_id,
            profile_id=profile_id,
            dedupe_key=key,
            state=JobState.QUEUED,
            priority=priority,
            attempts=0,
            max_attempts=max_attempts,
            available_at=0.0,
            payload=payload,
            enqueued_at=utcnow(),
        )
        table = SignJob.__table__
        stmt = (
            insert_or_ignore(self.db.dialect, table, ["dedupe_key"])
            .values(**values)
            .returning(table.c.id)
        )
        return session.execute(stmt).first() is not None

    def requeue(
        self, session: Session, *, job_ids: Iterable[int] | None = None, state: str = JobState.DEAD
    ) -> int:
        """Put dead (or other finished) jobs back in the queue with a fresh attempt budget."""
        stmt = sa.update(SignJob).where(SignJob.state == state)
        if job_ids is not None:
            stmt = stmt.where(SignJob.id.in_(list(job_ids)))
        stmt = stmt.values(
            state=JobState.QUEUED,
            attempts=0,
            available_at=0.0,
            lease_token=None,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=None,
        )
        return session.execute(stmt).rowcount

    # -------------------------------------------------------------- consuming

    def claim(
        self,
        owner: str,
        *,
        kinds: Iterable[str] | None = None,
        profile_ids: Iterable[int] | None = None,
        job_ids: Iterable[int] | None = None,
    ) -> Lease | None:
        """Lease the next available job (optionally only among ``job_ids``), or return None."""
        # one token for every try: a retry can find what an unanswered COMMIT did
        token = secrets.token_hex(16)
        params: dict = {
            "owner": owner,
            "token": token,
            "ttl": self.lease_seconds,
            "started": utcnow(),
        }
        filters = (
            _in_filter("kind", "k", kinds, params)
            + _in_filter("profile_id", "p", profile_ids, params)
            + _in_filter("id", "j", job_ids, params)
        )
        sql = self._claim_sql(filters)
        tries = 0

        def attempt(session: Session):
            nonlocal tries
            tries += 1
            if tries > 1:
                held = _held_lease(session, token)
                if held is not None:
                    return held
            self._reap(session)
            return session.execute(sa.text(sql), params).mappings().first()

        row = self._write_retried(attempt, "claiming a job")
        if row is None:
            return None
        return Lease(
            job_id=row["id"],
            token=token,
            owner=owner,
            kind=row["kind"],
            version_id=row["version_id"],
            profile_id=row["profile_id"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            payload=_json(row["payload"]),
            expires_at=float(row["lease_expires_at"]),
        )

    def _claim_sql(self, filters: str) -> str:
        """One statement that leases the first available job matching ``filters``: a queued one
        whose time has come, or a running one whose lease expired with attempts left."""
        now = self._now
        candidates = (
            f"SELECT id FROM sign_job WHERE ((state = 'queued' AND available_at <= {now}) "
            f"OR (state = 'running' AND lease_expires_at < {now} AND attempts < max_attempts)){filters} "
            f"ORDER BY priority DESC, id LIMIT 1"
        )
        assignments = (
            f"state = 'running', attempts = sign_job.attempts + 1, lease_owner = :owner, lease_token = :token, "
            f"lease_expires_at = {now} + :ttl, heartbeat_at = {now}, started_at = :started, "
            f"last_error = CASE WHEN sign_job.state = 'running' "
            f"THEN 'previous lease expired (worker lost); reclaimed' ELSE sign_job.last_error END"
        )
        if self.db.dialect == "postgresql":
            return (
                f"WITH next AS ({candidates} FOR UPDATE SKIP LOCKED) UPDATE sign_job SET {assignments} "
                f"FROM next WHERE sign_job.id = next.id RETURNING {', '.join('sign_job.' + c.strip() for c in _RETURNING.split(','))}"
            )
        return f"UPDATE sign_job SET {assignments} WHERE id = ({candidates}) RETURNING {_RETURNING}"

    def _reap(self, session: Session) -> int:
        """Expired leases on their last attempt end dead: the job killed its worker every time."""
        sql = (
            f"UPDATE sign_job SET state = 'dead', lease_token = NULL, lease_expires_at = NULL, "
            f"last_error = 'lease expired on attempt ' || attempts || ' of ' || max_attempts "
            f"|| ' (the worker died or hung each time)' "
            f"WHERE state = 'running' AND lease_expires_at < {self._now} AND attempts >= max_attempts"
        )
        return session.execute(sa.text(sql)).rowcount

    def reap(self) -> int:
        return self._write_retried(self._reap, "reaping expired leases")

    def heartbeat(self, lease: Lease, *, retry: bool = True) -> Lease:
        """Extend the lease; raises LeaseLost if another worker has taken the job.

        A heartbeat that cannot reach the database is not a lost lease: with ``retry`` it waits
        for the database (``retry=False``: the error goes to the caller, who may beat again later).
        """
        sql = (
            f"UPDATE sign_job SET lease_expires_at = {self._now} + :ttl, heartbeat_at = {self._now} "
            f"WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING lease_expires_at"
        )

        def beat(session: Session):
            return session.execute(
                sa.text(sql), {"ttl": self.lease_seconds, "id": lease.job_id, "token": lease.token}
            ).first()

        if retry:
            row = self._write_retried(beat, f"heartbeat of job {lease.job_id}")
        else:
            with self.db.write() as session:
                row = beat(session)
        if row is None:
            raise LeaseLost(f"job {lease.job_id}: lease lost (taken over or finished elsewhere)")
        return Lease(**{**lease.__dict__, "expires_at": float(row[0])})

    def complete(self, session: Session, lease: Lease) -> None:
        """Mark the job done inside the caller's transaction; raises LeaseLost (rolling it back) if stale."""
        stmt = (
            sa.update(SignJob)
            .where(_fenced(lease, JobState.RUNNING))
            .values(
                state=JobState.DONE, finished_at=utcnow(), lease_expires_at=None, last_error=None
            )
        )
        if session.execute(stmt).rowcount != 1:
            raise LeaseLost(f"job {lease.job_id}: lease lost before completion; result discarded")

    def completed_by(self, session: Session, lease: Lease) -> bool:
        """True if the job is done under this lease's token (this worker's completion committed)."""
        done = sa.select(sa.func.count()).select_from(SignJob).where(_fenced(lease, JobState.DONE))
        return session.execute(done).scalar_one() == 1

    def complete_with(self, lease: Lease, write: Callable[[Session], object]) -> bool:
        """Run ``write(session)`` and ``complete`` in one write transaction, retried as a whole on a
        transient database error.

        Returns True when this call committed the completion, False when the job was already done
        under this lease (an earlier try committed but its answer was lost): ``write`` is then not
        run again, so a result is never written twice. Raises LeaseLost if the lease is gone.
        """

        def attempt(session: Session) -> bool:
            if self.completed_by(session, lease):
                return False
            write(session)
            self.complete(session, lease)
            return True

        return self._write_retried(attempt, f"completing job {lease.job_id}")

    def fail(self, lease: Lease, reason: str, *, retryable: bool = True) -> str:
        """Record a failure: back to the queue with backoff while attempts remain, else dead.

        Returns the job's new state, or raises LeaseLost (also when a retry follows a COMMIT whose
        answer was lost: the failure was recorded, the token is gone).
        """
        retry = retryable and lease.attempts < lease.max_attempts
        delay = self.job_backoff.delay(lease.attempts)
        new_state = JobState.QUEUED if retry else JobState.DEAD
        sql = (
            f"UPDATE sign_job SET state = :state, last_error = :reason, lease_token = NULL, lease_owner = NULL, "
            f"lease_expires_at = NULL, available_at = {self._now} + :delay, finished_at = :finished "
            f"WHERE id = :id AND lease_token = :token AND state = 'running'"
        )
        params = {
            "state": new_state,
            "reason": reason[:4000],
            "delay": delay,
            "finished": None if retry else utcnow(),
            "id": lease.job_id,
            "token": lease.token,
        }

        n = self._write_retried(
            lambda session: session.execute(sa.text(sql), params).rowcount,
            f"recording the failure of job {lease.job_id}",
        )
        if n != 1:
            raise LeaseLost(f"job {lease.job_id}: lease lost before the failure could be recorded")
        return new_state

    def release(self, lease: Lease) -> bool:
        """Give the job back untried (e.g. on SIGTERM): it does not count as an attempt."""
        sql = (
            f"UPDATE sign_job SET state = 'queued', attempts = attempts - 1, lease_token = NULL, "
            f"lease_owner = NULL, lease_expires_at = NULL, available_at = {self._now} "
            f"WHERE id = :id AND lease_token = :token AND state = 'running'"
        )
        params = {"id": lease.job_id, "token": lease.token}
        return self._write_retried(
            lambda session: session.execute(sa.text(sql), params).rowcount == 1,
            f"releasing job {lease.job_id}",
        )

    # -------------------------------------------------------------- watching

    def counts(self, profile_id: int | None = None) -> dict[str, int]:
        stmt = sa.select(SignJob.state, sa.func.count()).group_by(SignJob.state)
        if profile_id is not None:
            stmt = stmt.where(SignJob.profile_id == profile_id)
        with self.db.read() as session:
            found = dict(session.execute(stmt).all())
        return {s: int(found.get(s, 0)) for s in JobState}


def _in_filter(column: str, prefix: str, values: Iterable | None, params: dict) -> str:
    """`` AND column IN (:<prefix>0, ...)``, binding the values in ``params``; "" for no filter."""
    if values is None:
        return ""
    values = list(values)
    params.update({f"{prefix}{i}": v for i, v in enumerate(values)})
    return f" AND {column} IN (" + ", ".join(f":{prefix}{i}" for i in range(len(values))) + ")"


def _fenced(lease: Lease, state: str):
    """The lease's job, in ``state``, still under the lease's token."""
    return sa.and_(
        SignJob.id == lease.job_id, SignJob.lease_token == lease.token, SignJob.state == state
    )


def _held_lease(session: Session, token: str):
    """The job ``token`` leases, if an earlier try's COMMIT went through unanswered."""
    return session.execute(sa.text(_HELD_SQL), {"token": token}).mappings().first()


def _json(value):
    return json.loads(value) if isinstance(value, str) else value
