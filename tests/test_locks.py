"""Named leases (the nightly run's lock) on both backends: one holder at a time, renewal, release,
and a lease that frees itself when its holder stops renewing (a killed process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import sqlalchemy as sa

from registry.locks import DbLock
from tests.conftest import REPO


def _wait_until(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def _age(db, name: str, seconds: float) -> None:
    """What the passing of ``seconds`` does to a lease, without waiting for it."""
    with db.write() as s:
        s.execute(
            sa.text("UPDATE service_lock SET expires_at = expires_at - :t WHERE name = :n"),
            {"t": seconds, "n": name},
        )


def _expire_now(db, name: str) -> None:
    _age(db, name, 100000)


def test_one_holder_at_a_time_until_release(database):
    a, b = (
        DbLock(database, "nightly", "host-a", ttl=600),
        DbLock(database, "nightly", "host-b", ttl=600),
    )
    assert a.acquire() and a.token
    assert not b.acquire() and b.token is None
    held = b.holder()
    assert held["owner"] == "host-a" and 590 < held["expires_in"] <= 600
    assert DbLock(database, "other", "host-b").acquire()  # names are independent
    assert not b.heartbeat()  # never held: nothing to renew
    a.release()
    assert a.token is None and b.holder() is None
    assert b.acquire() and b.holder()["owner"] == "host-b"


def test_an_expired_lease_is_taken_over_and_its_old_holder_knows(database):
    a, b = (
        DbLock(database, "nightly", "host-a", ttl=600),
        DbLock(database, "nightly", "host-b", ttl=600),
    )
    assert a.acquire()
    _expire_now(database, "nightly")
    assert a.holder() is None  # expired: nobody holds it
    assert b.acquire()
    assert (
        not a.heartbeat() and a.token is None
    )  # the old holder's renewal fails: its token is gone
    a.release()  # and its release does not free b's lease
    assert b.holder()["owner"] == "host-b"


def test_heartbeat_renews_for_ttl(database):
    a = DbLock(database, "nightly", "host-a", ttl=600)
    assert a.acquire()
    _age(database, "nightly", 590)
    assert a.holder()["expires_in"] <= 10
    assert a.heartbeat() and a.holder()["expires_in"] > 590


def _holder_code(owner: str, *, ttl: float, every: float) -> str:
    """A script that takes the nightly lock, keeps it alive and says "held"."""
    return (
        "import sys\nfrom registry.db import Database\nfrom registry.locks import DbLock\n"
        f"lock = DbLock(Database(sys.argv[1]), 'nightly', {owner!r}, ttl={ttl})\n"
        f"assert lock.acquire()\nlock.keep_alive(every={every})\nprint('held', flush=True)\n"
    )


def _python(code: str, db_url: str) -> list[str]:
    return [sys.executable, "-c", code, db_url]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_the_lease_frees_itself_when_its_process_dies(database, db_url):
    """A process takes the nightly lock (an 8 s lease, renewed), is SIGKILLed; the lock then frees itself."""
    code = _holder_code("doomed", ttl=8.0, every=0.4) + "import time\ntime.sleep(3600)\n"
    proc = subprocess.Popen(_python(code, db_url), stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().strip() == "held"
        other = DbLock(database, "nightly", "survivor", ttl=600)
        assert not other.acquire() and other.holder()["owner"] == "doomed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    _wait_until(lambda: other.holder() is None, 120, "the dead holder's lease expiring")
    assert other.acquire() and other.holder()["owner"] == "survivor"


def test_keep_alive_renews_in_the_background_until_release(database):
    a = DbLock(database, "nightly", "host-a", ttl=600)
    assert a.acquire()
    _age(database, "nightly", 590)
    a.keep_alive(every=0.05)
    _wait_until(lambda: a.holder()["expires_in"] > 590, 60, "a background renewal")
    a.release()
    assert not a._beat.is_alive() and a.holder() is None


def test_keep_alive_stops_once_the_lease_is_lost(database):
    a, b = (
        DbLock(database, "nightly", "host-a", ttl=600),
        DbLock(database, "nightly", "host-b", ttl=600),
    )
    assert a.acquire()
    _expire_now(database, "nightly")
    assert b.acquire()
    a.keep_alive(every=0.05)
    _wait_until(lambda: not a._beat.is_alive(), 60, "the renewal thread giving up")
    assert a.token is None and b.holder()["owner"] == "host-b"


def _expires_at(db, name: str) -> float:
    with db.read() as s:
        return s.execute(
            sa.text("SELECT expires_at FROM service_lock WHERE name = :n"), {"n": name}
        ).scalar_one()


def test_the_default_renewal_lands_while_the_lease_still_holds(database):
    """``keep_alive()`` without ``every`` renews every ttl/3; each write sets "now + ttl", so the
    gap between the first two expiries is the time the first renewal took."""
    a = DbLock(database, "nightly", "host-a", ttl=9.0)
    assert a.acquire()
    first = _expires_at(database, "nightly")
    a.keep_alive()
    try:
        renewed = _wait_until(
            lambda: (e := _expires_at(database, "nightly")) != first and e, 120, "a renewal"
        )
    finally:
        a.release()
    assert renewed - first < 9.0  # before the lease ran out (3 s expected; 6 s of slack for load)


class CountingLock(DbLock):
    """A real lock that counts the renewals a database error cut short (and re-raises them)."""

    errors = 0

    def heartbeat(self) -> bool:
        try:
            return super().heartbeat()
        except sa.exc.DBAPIError:
            self.errors += 1
            raise


def test_keep_alive_renews_again_after_a_database_error(database):
    a = CountingLock(database, "nightly", "host-a", ttl=600)
    assert a.acquire()
    _age(database, "nightly", 590)
    with database.write() as s:
        s.execute(sa.text("ALTER TABLE service_lock RENAME TO service_lock_away"))
    a.keep_alive(every=0.05)
    try:
        _wait_until(lambda: a.errors >= 2, 60, "renewals failing while the table is away")
    finally:
        with database.write() as s:
            s.execute(sa.text("ALTER TABLE service_lock_away RENAME TO service_lock"))
    _wait_until(lambda: a.holder()["expires_in"] > 590, 60, "a renewal after the errors")
    a.release()
    assert a.holder() is None


def test_a_process_that_never_releases_its_lock_still_exits(database, db_url):
    """The renewal thread must not keep a finished process alive (holding the lease for ever)."""
    code = _holder_code("forgetful", ttl=600, every=0.05)  # and then the script just ends
    proc = subprocess.run(
        _python(code, db_url), capture_output=True, text=True, timeout=300, env=_env()
    )
    assert (proc.returncode, proc.stdout) == (0, "held\n"), proc.stderr
