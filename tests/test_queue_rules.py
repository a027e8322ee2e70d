"""Queue rules in process (survivors of the queue mutation runs; mutmut sees only what runs in
the test's own process, so the worker subprocesses of ``test_queue.py`` and the PostgreSQL-only
``test_retry.py`` leave these unchecked there):

- ``requeue`` touches only the jobs and the state it names and gives them a fresh start;
- a heartbeat without retries extends the lease it holds and names the job whose lease it lost;
- a higher priority goes first and ``claim``'s kind and job-id filters decide over it; a lease
  carries its owner, payload and expiry; ``counts`` of one profile leave the others out;
- a failed job waits its backoff exactly (doubling, at most an hour), keeps its reason (at most
  4000 characters), and only a final failure records a finish time;
- ``complete_with`` writes a result once and only under its own lease; ``reap`` ends only expired
  leases on their last attempt;
- an outage (the connection dies at a COMMIT): a claim whose answer was lost returns the lease it
  took; every transaction of the queue rides it out and the log line names it; a worker's stop or
  the queue's own policy ends the retries."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession

from registry.errors import LeaseLost
from registry.models import Signature, SignJob, Version
from registry.profiles import get_or_create_profile
from registry.queue import JobQueue, db_now_sql
from registry.retry import RetryPolicy
from registry.states import JobState
from tests.test_queue import _setup
from tests.test_retry import _write_signature


def _jobs(db, n: int, **enqueue_kw) -> dict[int, int]:
    """n LoRA jobs; version id -> job id."""
    _setup(db, n, **enqueue_kw)
    return _job_ids(db)


def _job_ids(db) -> dict[int | None, int]:
    """version id (None: a base job) -> job id."""
    with db.read() as s:
        return dict(s.execute(sa.select(SignJob.version_id, SignJob.id)).all())


def _row(db, job_id: int) -> SignJob:
    with db.read() as s:
        return s.get(SignJob, job_id)


def _fresh(job: SignJob) -> bool:
    return (
        job.state == JobState.QUEUED
        and job.attempts == 0
        and job.available_at == 0.0
        and job.lease_token is None
        and job.lease_owner is None
        and job.lease_expires_at is None
        and job.finished_at is None
    )


def test_requeue_restarts_only_the_named_jobs_in_the_named_state(database):
    ids = _jobs(database, 4, max_attempts=1)
    q = JobQueue(database, backoff_seconds=3600.0)
    done = q.claim("w")
    with database.write() as s:
        q.complete(s, done)
    dead = []
    while (lease := q.claim("w")) is not None:
        assert q.fail(lease, "boom") == JobState.DEAD
        dead.append(lease.job_id)
    assert sorted([done.job_id, *dead]) == sorted(ids.values())
    first, second, third = dead

    with database.write() as s:
        assert q.requeue(s, job_ids=[first]) == 1
    assert _fresh(_row(database, first))  # a fresh attempt budget, available at once
    assert all(_row(database, j).state == JobState.DEAD for j in (second, third))
    with database.write() as s:  # the state is part of the selection
        assert q.requeue(s, job_ids=[second], state=JobState.DONE) == 0
        assert q.requeue(s, job_ids=[done.job_id], state=JobState.DONE) == 1
    assert _row(database, second).state == JobState.DEAD
    assert _fresh(_row(database, done.job_id))  # its old lease token and owner are gone
    assert {q.claim("w").job_id, q.claim("w").job_id} == {first, done.job_id}
    with database.write() as s:  # no ids: every job in the state
        assert q.requeue(s) == 2
    assert _fresh(_row(database, second)) and _fresh(_row(database, third))


def test_a_heartbeat_without_retries_extends_its_lease_and_names_a_lost_one(database):
    _jobs(database, 1)
    q = JobQueue(database, lease_seconds=60)
    lease = q.claim("w")
    before = _row(database, lease.job_id).lease_expires_at
    time.sleep(0.01)  # the database clock moves on (millisecond precision)
    renewed = q.heartbeat(lease, retry=False)
    row = _row(database, lease.job_id)
    assert renewed.expires_at == row.lease_expires_at > before
    assert renewed.token == lease.token and row.lease_token == lease.token
    with database.write() as s:
        s.execute(sa.update(SignJob).values(lease_token="someone-else"))
    for retry in (False, True):
        with pytest.raises(LeaseLost, match=rf"^job {lease.job_id}: lease lost"):
            q.heartbeat(lease, retry=retry)


# ------------------------------------------------------------------ what a claim hands out


def _claimed(q: JobQueue, **filters) -> int | None:
    lease = q.claim("w", **filters)
    return None if lease is None else lease.version_id


def test_priority_goes_first_and_claim_filters_decide_over_it(database):
    pid = _setup(database, 3)  # lora jobs for versions 1, 2, 3 at priority 0
    q = JobQueue(database)
    with database.write() as s:  # enqueued after them, with higher priorities
        s.add(Version(id=4))
        s.flush()
        q.enqueue(s, profile_id=pid, version_id=4, priority=5)
        q.enqueue(s, profile_id=pid, kind="base", priority=9)
    ids = _job_ids(database)
    assert _claimed(q, kinds=["lora"]) == 4  # the base job would come first
    assert _claimed(q, job_ids=[ids[3], ids[2]]) == 2  # among the named jobs, the first in order
    assert _claimed(q, job_ids=[ids[3]]) == 3
    assert _claimed(q, job_ids=[ids[2], ids[3]]) is None  # both already leased
    assert q.claim("w").kind == "base"  # priority 9 before version 1's earlier job
    assert _claimed(q, kinds=["base", "lora"]) == 1


def test_a_lease_carries_its_owner_payload_and_expiry(database):
    pid = _setup(database, 0)
    payload = {"files": [{"name": "a.safetensors", "sha256": "ab" * 32}], "note": "x"}
    with database.write() as s:
        s.add(Version(id=7))
        s.flush()
        JobQueue(database).enqueue(s, profile_id=pid, version_id=7, payload=payload)
    lease = JobQueue(database, lease_seconds=60).claim("host:123:abc")
    row = _row(database, lease.job_id)
    assert lease.owner == row.lease_owner == "host:123:abc"
    assert lease.payload == payload
    assert lease.expires_at == row.lease_expires_at and isinstance(lease.expires_at, float)


def test_counts_of_one_profile_leave_the_others_out(database):
    pid = _setup(database, 2)
    q = JobQueue(database)
    with database.write() as s:
        other = get_or_create_profile(s, "other", {"n": 2}).id
        q.enqueue(s, profile_id=other, version_id=1)
    q.claim("w", profile_ids=[other])
    assert q.counts(pid) == {"queued": 2, "running": 0, "done": 0, "dead": 0}
    assert q.counts(other) == {"queued": 0, "running": 1, "done": 0, "dead": 0}
    assert q.counts() == {"queued": 2, "running": 1, "done": 0, "dead": 0}


# ------------------------------------------------------------------ failing and completing


def _db_now(db) -> float:
    with db.read() as s:
        return float(s.execute(sa.text(f"SELECT {db_now_sql(db.dialect)}")).scalar_one())


def test_a_failed_jobs_next_try_waits_its_backoff_doubling_up_to_an_hour_exactly(database):
    _jobs(database, 1, max_attempts=5)
    q = JobQueue(database, backoff_seconds=1000.0)
    for expected in (1000.0, 2000.0, 3600.0):  # attempt 3: 4000 s, capped at an hour
        lease = q.claim("w")
        before = _db_now(database)
        assert q.fail(lease, "transient") == JobState.QUEUED
        after = _db_now(database)
        available = _row(database, lease.job_id).available_at
        # the database clock's 'now' lies between the two readings; no jitter: exactly the backoff
        assert before + expected - 1e-3 <= available <= after + expected + 1e-3
        with database.write() as s:  # its time has come
            s.execute(sa.update(SignJob).values(available_at=0.0))


def test_a_failure_keeps_its_reason_and_only_a_final_one_records_a_finish(database):
    ids = _jobs(database, 2, max_attempts=2)
    q = JobQueue(database, backoff_seconds=0.0)
    first = q.claim("w", job_ids=[ids[1]])
    assert q.fail(first, "transient") == JobState.QUEUED
    job = _row(database, first.job_id)
    assert job.last_error == "transient" and job.finished_at is None  # it will run again
    again = q.claim("w", job_ids=[ids[1]])
    traceback = "".join(f"line {i}\n" for i in range(1000))  # 8890 characters
    assert q.fail(again, traceback) == JobState.DEAD
    job = _row(database, again.job_id)
    assert job.last_error == traceback[:4000] and job.finished_at is not None
    permanent = q.claim("w", job_ids=[ids[2]])
    assert q.fail(permanent, "not a LoRA", retryable=False) == JobState.DEAD
    assert _row(database, permanent.job_id).finished_at is not None
    with pytest.raises(LeaseLost, match=rf"^job {permanent.job_id}: lease lost"):
        q.fail(permanent, "again")


def _signed(db) -> list[int]:
    with db.read() as s:
        return s.execute(sa.select(Signature.version_id)).scalars().all()


def test_complete_with_writes_the_result_once_and_only_under_its_own_lease(database):
    _jobs(database, 2)
    q = JobQueue(database)
    lease = q.claim("w")
    runs = []

    def write(session):
        runs.append(1)
        _write_signature(lease)(session)

    assert q.complete_with(lease, write) is True
    job = _row(database, lease.job_id)
    assert job.state == JobState.DONE and job.finished_at is not None and job.last_error is None
    # the same lease again (a retry after a COMMIT whose answer was lost): done, nothing rewritten
    assert q.complete_with(lease, write) is False
    assert runs == [1] and _signed(database) == [lease.version_id]
    with pytest.raises(LeaseLost, match=rf"^job {lease.job_id}: lease lost before completion"):
        with database.write() as s:
            q.complete(s, lease)  # done already: a second completion is a stale one

    other = q.claim("w")
    stale = dataclasses.replace(other, token="stale")
    with pytest.raises(LeaseLost, match=rf"^job {other.job_id}: lease lost"):
        q.complete_with(stale, _write_signature(stale))
    assert _signed(database) == [lease.version_id]  # rolled back with the completion
    assert _row(database, other.job_id).state == JobState.RUNNING


def test_reap_ends_only_expired_leases_on_their_last_attempt(database):
    ids = _jobs(database, 3, max_attempts=1)
    with database.write() as s:
        s.execute(sa.update(SignJob).where(SignJob.id == ids[2]).values(max_attempts=3))
    q = JobQueue(database, lease_seconds=600)
    leases = {v: q.claim("w", job_ids=[ids[v]]) for v in (1, 2, 3)}
    with database.write() as s:  # 1 and 2 expired; 3 still held
        s.execute(
            sa.update(SignJob).where(SignJob.id.in_([ids[1], ids[2]])).values(lease_expires_at=1.0)
        )
    assert q.reap() == 1
    dead = _row(database, ids[1])
    assert dead.state == JobState.DEAD and dead.lease_token is None
    assert dead.last_error.startswith("lease expired on attempt 1 of 1")
    # attempts left: the next claim takes it over; still held: untouched
    assert _row(database, ids[2]).state == _row(database, ids[3]).state == JobState.RUNNING
    assert q.reap() == 0
    assert q.claim("w").job_id == ids[2] and leases[3].token == _row(database, ids[3]).lease_token


# ------------------------------------------------------------------ a database that goes away


class Outage:
    """The connection dies at the next COMMIT of a write transaction: before it (nothing was
    written) or after it (written, but the answer never arrived). SQLAlchemy's DisconnectionError
    is what a dead connection raises; ``registry.retry`` counts it as transient."""

    def __init__(self, when: str):
        self.event = {"before": "before_commit", "after": "after_commit"}[when]
        self.left = 0

    def __enter__(self):
        event.listen(OrmSession, self.event, self._fire)
        self.left = 1
        return self

    def __exit__(self, *exc):
        event.remove(OrmSession, self.event, self._fire)

    def _fire(self, session):
        if self.left:
            self.left -= 1
            raise sa.exc.DisconnectionError("server closed the connection unexpectedly")


FAST = RetryPolicy(initial=0.01, cap=0.01, jitter=0.0, deadline=60.0)


def test_a_claim_whose_commit_answer_was_lost_returns_the_lease_it_took(database):
    _jobs(database, 3)
    q = JobQueue(database, retry=FAST)
    with Outage("after") as outage:
        lease = q.claim("w")
    assert outage.left == 0
    with database.read() as s:
        running = s.execute(sa.select(SignJob).where(SignJob.state == "running")).scalars().all()
    # without looking up its token first, the retry would lease a second job and orphan this one
    assert [(j.id, j.lease_token, j.attempts) for j in running] == [(lease.job_id, lease.token, 1)]
    assert (lease.version_id, lease.attempts, lease.owner) == (1, 1, "w")
    with Outage("before"):  # nothing was written: the retry leases the next job
        assert q.claim("w").version_id == 2
    assert q.counts() == {"queued": 1, "running": 2, "done": 0, "dead": 0}


def test_the_queues_transactions_ride_out_an_outage_and_the_log_names_each(database, caplog):
    ids = _jobs(database, 3)
    q = JobQueue(database, retry=FAST, backoff_seconds=0.0)

    def through_outage(step):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="registry.retry"), Outage("before") as o:
            result = step()
        assert o.left == 0
        return result, [r.getMessage() for r in caplog.records]

    def named(messages, what: str) -> bool:
        return any(m.startswith(f"registry database unavailable ({what}): ") for m in messages)

    lease, logged = through_outage(lambda: q.claim("w", job_ids=[ids[1]]))
    assert lease.version_id == 1 and named(logged, "claiming a job")
    renewed, logged = through_outage(lambda: q.heartbeat(lease))  # retrying is the default
    assert renewed.token == lease.token and named(logged, f"heartbeat of job {lease.job_id}")
    done, logged = through_outage(lambda: q.complete_with(lease, _write_signature(lease)))
    assert done is True and named(logged, f"completing job {lease.job_id}")
    failing = q.claim("w", job_ids=[ids[2]])
    state, logged = through_outage(lambda: q.fail(failing, "boom"))
    assert state == JobState.QUEUED
    assert named(logged, f"recording the failure of job {failing.job_id}")
    held = q.claim("w", job_ids=[ids[3]])
    released, logged = through_outage(lambda: q.release(held))
    assert released is True and named(logged, f"releasing job {held.job_id}")
    reaped, logged = through_outage(q.reap)
    assert reaped == 0 and named(logged, "reaping expired leases")
    assert q.counts() == {"queued": 2, "running": 0, "done": 1, "dead": 0}


def test_a_stop_request_or_the_queues_own_policy_ends_the_retries(database, monkeypatch):
    _jobs(database, 1)
    monkeypatch.setenv("CARLOS_REG_DB_RETRY_SECONDS", "60")  # the environment would retry
    stopping = JobQueue(database, retry=FAST)
    stopping.wait = lambda seconds: True  # a worker's stop: no more waiting
    no_retries = JobQueue(database, retry=RetryPolicy(deadline=0))  # its own: do not retry
    for q in (stopping, no_retries):
        with Outage("before"), pytest.raises(sa.exc.DisconnectionError):
            q.claim("w")
    assert no_retries.counts() == {"queued": 1, "running": 0, "done": 0, "dead": 0}
