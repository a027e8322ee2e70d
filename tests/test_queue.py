"""The job queue on SQLite and PostgreSQL, with real worker processes."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from registry.errors import LeaseLost
from registry.models import Signature, SignJob, Version
from registry.profiles import get_or_create_profile
from registry.queue import JobQueue
from registry.vectors import to_blob
from tests.conftest import REPO


def _setup(db, n: int, **enqueue_kw) -> int:
    with db.write() as s:
        profile = get_or_create_profile(s, "test", {"n": 1})
        s.add_all([Version(id=i, name=f"lora {i}") for i in range(1, n + 1)])
        s.flush()
        q = JobQueue(db)
        for i in range(1, n + 1):
            q.enqueue(s, profile_id=profile.id, version_id=i, **enqueue_kw)
        return profile.id


def _worker(db_url, log, mode, lease="30"):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.queue_worker", db_url, str(log), mode, lease],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _signatures(db) -> int:
    with db.read() as s:
        return s.execute(sa.select(sa.func.count()).select_from(Signature)).scalar_one()


def test_enqueue_is_idempotent(database):
    pid = _setup(database, 3)
    q = JobQueue(database)
    with database.write() as s:
        assert q.enqueue(s, profile_id=pid, version_id=1) is False
        assert q.enqueue(s, profile_id=pid, kind="base") is True
        assert q.enqueue(s, profile_id=pid, kind="base") is False
    assert q.counts() == {"queued": 4, "running": 0, "done": 0, "dead": 0}


@pytest.mark.slow
def test_four_processes_drain_1000_jobs_each_completed_once(database, db_url, tmp_path):
    _setup(database, 1000)
    log = tmp_path / "done.log"
    procs = [_worker(db_url, log, "drain") for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert "database is locked" not in err
    done = collections.Counter(int(x) for x in log.read_text().split())
    assert len(done) == 1000 and set(done.values()) == {1}
    assert _signatures(database) == 1000
    assert JobQueue(database).counts() == {"queued": 0, "running": 0, "done": 1000, "dead": 0}
    with database.read() as s:
        assert s.execute(sa.select(sa.func.max(SignJob.attempts))).scalar_one() == 1


def test_sigkilled_worker_job_is_reclaimed_after_expiry_and_completed_once(
    database, db_url, tmp_path
):
    _setup(database, 1)
    holder = _worker(db_url, tmp_path / "unused.log", "hold", lease="1.5")
    job_id = int(holder.stdout.readline())
    q = JobQueue(database, lease_seconds=1.5)
    assert q.claim("other") is None  # the lease still holds
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10
    lease = None
    while lease is None and time.monotonic() < deadline:
        time.sleep(0.2)
        lease = q.claim("rescuer")
    assert lease is not None and lease.job_id == job_id and lease.attempts == 2
    with database.write() as s:
        s.add(
            Signature(
                version_id=lease.version_id,
                profile_id=lease.profile_id,
                dim=1,
                direction=to_blob([1.0]),
                strength=0.0,
                consistency=0.0,
            )
        )
        q.complete(s, lease)
    assert _signatures(database) == 1
    with database.read() as s:
        job = s.get(SignJob, job_id)
        assert job.state == "done" and "reclaimed" not in (job.last_error or "")


def test_taken_over_lease_cannot_heartbeat_or_complete(database):
    _setup(database, 1)
    q = JobQueue(database, lease_seconds=0.3)
    zombie = q.claim("zombie")
    time.sleep(0.5)
    live = q.claim("live")
    assert live is not None and live.job_id == zombie.job_id and live.token != zombie.token
    with pytest.raises(LeaseLost):
        q.heartbeat(zombie)
    with pytest.raises(LeaseLost):
        with database.write() as s:
            s.add(
                Signature(
                    version_id=zombie.version_id,
                    profile_id=zombie.profile_id,
                    dim=1,
                    direction=to_blob([1.0]),
                    strength=9.0,
                    consistency=9.0,
                )
            )
            q.complete(s, zombie)
    assert _signatures(database) == 0  # the zombie's result was rolled back with its completion
    with pytest.raises(LeaseLost):
        q.fail(zombie, "zombie says no")
    assert q.release(zombie) is False
    live = q.heartbeat(live)
    with database.write() as s:
        s.add(
            Signature(
                version_id=live.version_id,
                profile_id=live.profile_id,
                dim=1,
                direction=to_blob([1.0]),
                strength=1.0,
                consistency=1.0,
            )
        )
        q.complete(s, live)
    assert _signatures(database) == 1


def test_always_failing_job_ends_dead_with_reason_while_others_finish(database):
    _setup(database, 5, max_attempts=3)
    q = JobQueue(database, backoff_seconds=0.0)
    states = collections.Counter()
    while (lease := q.claim("w")) is not None:
        if lease.version_id == 3:
            states[q.fail(lease, f"boom on attempt {lease.attempts}")] += 1
            continue
        with database.write() as s:
            q.complete(s, lease)
    assert states == {"queued": 2, "dead": 1}
    assert q.counts() == {"queued": 0, "running": 0, "done": 4, "dead": 1}
    with database.read() as s:
        job = s.execute(sa.select(SignJob).where(SignJob.version_id == 3)).scalar_one()
        assert job.state == "dead" and job.attempts == 3 and job.last_error == "boom on attempt 3"
    with database.write() as s:
        assert q.requeue(s) == 1
    assert q.counts()["queued"] == 1


def test_permanent_failure_is_dead_at_once_and_backoff_delays_retries(database):
    _setup(database, 2)
    q = JobQueue(database, backoff_seconds=60.0)
    first = q.claim("w")
    assert q.fail(first, "not a LoRA", retryable=False) == "dead"
    second = q.claim("w")
    assert q.fail(second, "transient") == "queued"
    assert q.claim("w") is None  # backing off for 60 s


def test_release_does_not_count_an_attempt(database):
    _setup(database, 1)
    q = JobQueue(database)
    lease = q.claim("w")
    assert q.release(lease) is True
    again = q.claim("w")
    assert again.job_id == lease.job_id and again.attempts == 1


def test_expired_lease_on_last_attempt_is_reaped_dead(database):
    _setup(database, 1, max_attempts=1)
    q = JobQueue(database, lease_seconds=0.2)
    assert q.claim("dies") is not None
    time.sleep(0.4)
    assert q.claim("next") is None
    with database.read() as s:
        job = s.execute(sa.select(SignJob)).scalar_one()
    assert job.state == "dead" and "lease expired on attempt 1 of 1" in job.last_error


def test_claim_filters_by_kind_and_profile(database):
    pid = _setup(database, 2)
    q = JobQueue(database)
    with database.write() as s:
        other = get_or_create_profile(s, "other", {"n": 2}).id
        q.enqueue(s, profile_id=pid, kind="base", priority=10)
        q.enqueue(s, profile_id=other, version_id=1)
    assert q.claim("w", kinds=["base"]).kind == "base"
    assert q.claim("w", profile_ids=[other]).profile_id == other
    lease = q.claim("w", kinds=["lora"], profile_ids=[pid])
    assert lease.kind == "lora" and lease.profile_id == pid
