"""Queue rules in process (survivors of the queue mutation run): ``requeue`` touches only the jobs
and the state it names and gives them a fresh start; a heartbeat without retries extends the lease
it holds and names the job whose lease it lost."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from registry.errors import LeaseLost
from registry.models import SignJob
from registry.queue import JobQueue
from registry.states import JobState
from tests.test_queue import _setup


def _jobs(db, n: int, **enqueue_kw) -> dict[int, int]:
    """n LoRA jobs; version id -> job id."""
    _setup(db, n, **enqueue_kw)
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
