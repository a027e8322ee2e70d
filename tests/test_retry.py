"""Riding out database outages: error classification, backoff, and the queue's fenced retries,
provoked with real PostgreSQL failures (terminated backends, a stopped server, a closed port)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession

from registry.db import Database
from registry.errors import DatabaseError, LeaseLost, NotFound
from registry.models import Signature, SignJob, Version
from registry.profiles import get_or_create_profile
from registry.queue import JobQueue
from registry.retry import (
    DatabaseUnavailable,
    RetryPolicy,
    describe,
    is_transient,
    retry_call,
)
from registry.signatures import current_seq, save_signature
from tests.pg import free_port

pytestmark = pytest.mark.postgres

FAST = RetryPolicy(initial=0.05, cap=0.2, deadline=20.0)


def _terminate(pg_server, pid: int) -> None:
    """pg_terminate_backend from another connection, and wait until the backend is gone."""
    with psycopg.connect(
        f"host=127.0.0.1 port={pg_server.port} user=carlos dbname=postgres", autocommit=True
    ) as c:
        c.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(100):
            if (
                c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()[0]
                == 0
            ):
                return
            time.sleep(0.02)


def _error_of(fn) -> BaseException:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the error itself is what we examine
        return exc
    raise AssertionError("no error")


def _select_one(db: Database) -> None:
    with db.read() as s:
        s.execute(sa.text("SELECT 1"))


@pytest.fixture
def db_url(pg_url):
    """Every test here runs on PostgreSQL: ``database`` is a migrated PostgreSQL registry."""
    return pg_url


def _kill_own_backend(pg_server, session) -> None:
    _terminate(pg_server, session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_terminated_backend_and_refused_connection_are_transient(pg_server, database):
    def terminated():
        with database.write() as s:
            _kill_own_backend(pg_server, s)
            s.execute(sa.text("SELECT 1"))

    exc = _error_of(terminated)
    assert is_transient(exc), repr(exc)
    assert "terminating connection due to administrator command" in describe(exc)
    closed = Database(f"postgresql+psycopg://carlos@127.0.0.1:{free_port()}/postgres")
    try:
        exc = _error_of(lambda: _select_one(closed))
    finally:
        closed.dispose()
    assert isinstance(exc, DatabaseError) and is_transient(exc), repr(exc)
    assert "Connection refused" in describe(exc) and "\n" not in describe(exc)


def test_sql_errors_missing_database_and_decisions_are_not_transient(pg_server, database):
    def syntax():
        with database.write() as s:
            s.execute(sa.text("SELEC 1"))

    def duplicate():
        with database.write() as s:
            s.add_all([Version(id=1), Version(id=1)])

    missing = Database(pg_server.url("no_such_database"))
    try:
        errors = [_error_of(syntax), _error_of(duplicate), _error_of(lambda: _select_one(missing))]
    finally:
        missing.dispose()
    errors += [
        LeaseLost("job 1: lease lost"),
        NotFound("x"),
        DatabaseUnavailable("gave up"),
        ValueError("x"),
    ]
    for exc in errors:
        assert not is_transient(exc), repr(exc)


def test_non_transient_error_fails_fast_without_waiting(database):
    calls, waits = [], []

    def bad():
        calls.append(1)
        with database.read() as s:
            s.execute(sa.text("SELECT * FROM no_such_table"))

    with pytest.raises(sa.exc.ProgrammingError):
        retry_call(bad, what="test", policy=FAST, wait=lambda d: waits.append(d) or False)
    assert calls == [1] and waits == []


def test_backoff_grows_to_its_cap_with_bounded_jitter():
    exact = RetryPolicy(initial=0.5, factor=2.0, cap=4.0, jitter=0.0)
    assert list(itertools.islice(exact.delays(), 7)) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    jittered = list(itertools.islice(RetryPolicy(initial=0.5, cap=4.0, jitter=0.2).delays(), 50))
    assert all(d <= 4.0 for d in jittered) and all(d >= 0.8 * 4.0 for d in jittered[3:])
    assert exact.with_cap(1.0).cap == 1.0 and exact.with_cap(0.1).initial == 0.1


def test_retries_a_terminated_backend_then_succeeds_and_logs_two_lines(pg_server, database, caplog):
    calls = []

    def work():
        calls.append(1)
        with database.write() as s:
            if len(calls) == 1:
                _kill_own_backend(pg_server, s)
            return s.execute(sa.text("SELECT 42")).scalar_one()

    with caplog.at_level(logging.INFO, logger="registry.retry"):
        assert retry_call(work, what="testing", policy=FAST) == 42
    assert len(calls) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert warnings[0].startswith("registry database unavailable (testing): AdminShutdown")
    assert warnings[1].startswith("registry database reachable again after")


def test_gives_up_after_the_deadline_with_one_line_and_caps_each_wait():
    db = Database(f"postgresql+psycopg://carlos@127.0.0.1:{free_port()}/postgres")
    waits = []

    def wait(seconds):
        waits.append(seconds)
        time.sleep(seconds)
        return False

    def read():
        with db.read() as s:
            s.execute(sa.text("SELECT 1"))

    t0 = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailable) as info:
            retry_call(
                read,
                what="reading",
                policy=RetryPolicy(initial=0.05, cap=0.2, jitter=0.0, deadline=1.0),
                wait=wait,
            )
    finally:
        db.dispose()
    assert 1.0 <= time.monotonic() - t0 < 5.0
    assert len(waits) >= 5 and max(waits) <= 0.2 and waits[:3] == [0.05, 0.1, 0.2]
    message = str(info.value)
    assert "\n" not in message and "(reading)" in message and "Connection refused" in message
    assert not is_transient(info.value)  # an outer retry does not wait all over again


def test_a_stop_request_ends_the_retries_with_the_last_error():
    db = Database(f"postgresql+psycopg://carlos@127.0.0.1:{free_port()}/postgres")
    calls = []

    def read():
        calls.append(1)
        with db.read() as s:
            s.execute(sa.text("SELECT 1"))

    try:
        with pytest.raises(DatabaseError) as info:
            retry_call(read, what="reading", policy=FAST, wait=lambda seconds: True)
    finally:
        db.dispose()
    assert calls == [1] and is_transient(info.value)


# ---------------------------------------------------------------- the queue's fenced retries


def _queue_with_jobs(db, n: int) -> tuple[JobQueue, int]:
    with db.write() as s:
        pid = get_or_create_profile(s, "p", {"n": 1}).id
        s.add_all([Version(id=i) for i in range(1, n + 1)])
        s.flush()
        q = JobQueue(db, retry=FAST)
        for i in range(1, n + 1):
            q.enqueue(s, profile_id=pid, version_id=i)
    return q, pid


class LoseCommitAnswer:
    """After the next COMMIT of a session has succeeded, raise the error a client sees when its
    connection dies before the answer arrives: a real one, from a really terminated backend."""

    def __init__(self, pg_server, db: Database):
        self.armed = False
        self.fired = 0
        engine = sa.create_engine(db.url)
        with engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            _terminate(pg_server, pid)
            self.error = _error_of(lambda: conn.execute(sa.text("SELECT 1")))
        engine.dispose()
        assert is_transient(self.error)

    def __enter__(self):
        event.listen(OrmSession, "after_commit", self._after_commit)
        return self

    def __exit__(self, *exc):
        event.remove(OrmSession, "after_commit", self._after_commit)

    def _after_commit(self, session):
        if self.armed:
            self.armed = False
            self.fired += 1
            raise self.error


def test_claim_whose_commit_answer_was_lost_returns_the_lease_it_took(pg_server, database):
    q, _ = _queue_with_jobs(database, 3)
    with LoseCommitAnswer(pg_server, database) as lost:
        lost.armed = True
        lease = q.claim("w")
    assert lost.fired == 1
    with database.read() as s:
        running = s.execute(sa.select(SignJob).where(SignJob.state == "running")).scalars().all()
    # without the token lookup the retry would lease a second job and orphan the first
    assert [(j.id, j.lease_token, j.attempts) for j in running] == [(lease.job_id, lease.token, 1)]
    assert q.counts() == {"queued": 2, "running": 1, "done": 0, "dead": 0}


def _write_signature(lease):
    def write(session):
        save_signature(
            session,
            version_id=lease.version_id,
            profile_id=lease.profile_id,
            direction=[1.0, 0.0],
            strength=1.0,
            consistency=1.0,
            job_id=lease.job_id,
        )

    return write


def test_completion_lost_in_a_restart_is_retried_and_written_once(pg_server, database):
    q, _ = _queue_with_jobs(database, 2)
    lease = q.claim("w")
    runs = []

    def write(session):  # the first try loses its connection mid-transaction: nothing was committed
        runs.append(1)
        if len(runs) == 1:
            _kill_own_backend(pg_server, session)
        _write_signature(lease)(session)

    assert q.complete_with(lease, write) is True
    assert len(runs) == 2
    with database.read() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Signature)).scalar_one() == 1
        assert s.get(SignJob, lease.job_id).state == "done" and current_seq(s) == 1

    second = q.claim(
        "w"
    )  # the answer of a successful COMMIT is lost: the retry must not write again
    runs.clear()
    with LoseCommitAnswer(pg_server, database) as lost:
        lost.armed = True
        assert (
            q.complete_with(second, lambda s: (runs.append(1), _write_signature(second)(s)))
            is False
        )
    assert lost.fired == 1 and len(runs) == 1
    with database.read() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Signature)).scalar_one() == 2
        assert s.get(SignJob, second.job_id).state == "done" and current_seq(s) == 2
    with pytest.raises(LeaseLost):  # fenced as before: a stale lease still cannot complete
        q.complete_with(dataclasses.replace(second, token="stale"), _write_signature(second))


def test_heartbeat_survives_a_restart_longer_than_the_lease_and_still_sees_a_takeover(
    pg_server, database, caplog
):
    from signer.heartbeat import Heartbeat

    q, _ = _queue_with_jobs(database, 1)
    q.lease_seconds = 0.6
    lease = q.claim("w")
    beat = Heartbeat(q, lease)
    outage = f"registry database unavailable (heartbeat of job {lease.job_id})"

    def logged(prefix: str) -> bool:
        return any(r.getMessage().startswith(prefix) for r in list(caplog.records))

    def seconds_left() -> float:
        with database.read() as s:
            return (
                s.execute(
                    sa.text(
                        "SELECT lease_expires_at - extract(epoch from clock_timestamp()) "
                        "FROM sign_job WHERE id = :id AND state = 'running' AND lease_token = :token"
                    ),
                    {"id": lease.job_id, "token": lease.token},
                ).scalar()
                or 0.0
            )

    with caplog.at_level(logging.WARNING, logger="registry.retry"):
        beat.start()
        pg_server.stop()
        down = time.monotonic()
        try:
            # down until the heartbeat has provably met the outage, and for longer than the lease
            _wait_until(lambda: logged(outage), "the heartbeat never met the outage")
            while time.monotonic() - down < 3 * q.lease_seconds:
                time.sleep(0.05)
        finally:
            pg_server.start()
        # back: the heartbeat reconnects and renews the lease it still holds (nothing took it)
        _wait_until(
            lambda: logged("registry database reachable again") and seconds_left() > 0,
            "the lease was not renewed after the restart",
        )
        assert beat.is_alive() and not beat.lost and beat.error is None
        with database.write() as s:  # another worker takes the job over
            s.execute(
                sa.update(SignJob)
                .where(SignJob.id == lease.job_id)
                .values(lease_token="someone-else")
            )
        beat.join(timeout=120)  # it sees the takeover at its next beat
    assert beat.lost and not beat.is_alive()


def _wait_until(condition, what: str, limit: float = 120) -> None:
    """Poll for a state (a generous limit for a loaded machine: the state decides, not the clock)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_pool_size_comes_from_the_environment(pg_url, monkeypatch):
    from registry.app import App
    from registry.errors import UsageError
    from registry.settings import Settings

    monkeypatch.setenv("CARLOS_REG_DB_POOL", "2")
    db = Database(pg_url)
    assert db.engine.pool.size() == 2 and db.engine.pool._max_overflow == 0
    db.dispose()
    app = App(Settings.load(db=pg_url))
    app.default_pool_size = 3
    assert app.raw_db.pool_size == 2  # the operator's setting wins over the command's default
    app.close()
    monkeypatch.delenv("CARLOS_REG_DB_POOL")
    app = App(Settings.load(db=pg_url))
    assert (
        app.raw_db.engine.pool.size() == 5
    )  # a command that asks for nothing gets the documented 5
    app.close()
    # what each long-running command asks for (registry/db.py): a worker 3, the service its threads + 4
    from registry.api import API_THREADS
    from signer.commands import WORKER_POOL_SIZE

    assert WORKER_POOL_SIZE == 3
    for wanted in (WORKER_POOL_SIZE, API_THREADS + 4):
        app = App(Settings.load(db=pg_url))
        app.default_pool_size = wanted
        assert app.raw_db.engine.pool.size() == wanted and app.raw_db.engine.pool._max_overflow == 0
        app.close()
    monkeypatch.setenv("CARLOS_REG_DB_POOL", "0")
    with pytest.raises(UsageError, match="CARLOS_REG_DB_POOL"):
        Database(pg_url)


def test_a_pool_of_two_serves_a_worker_loop_and_its_heartbeat(database):
    """Two threads (main loop + heartbeat), two connections: no wait for the pool."""
    db = Database(database.url, pool_size=2)
    q = JobQueue(db, lease_seconds=0.3, retry=FAST)
    with database.write() as s:
        pid = get_or_create_profile(s, "p", {"n": 1}).id
        s.add(Version(id=1))
        s.flush()
        q.enqueue(s, profile_id=pid, version_id=1)
    from signer.heartbeat import Heartbeat

    lease = q.claim("w")
    beat = Heartbeat(q, lease)
    beat.start()
    try:
        t0 = time.monotonic()
        while (
            time.monotonic() - t0 < 1.0
        ):  # the main loop keeps a transaction open most of the time
            with db.write() as s:
                s.execute(sa.text("SELECT pg_sleep(0.05)"))
        assert not beat.lost and beat.error is None
        assert q.complete_with(lease, lambda s: None) is True
    finally:
        beat.stop()
        db.dispose()
