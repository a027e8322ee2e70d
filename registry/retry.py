"""Riding out a database that goes away for a while (restart, failover, network blip).

``is_transient(exc)`` says whether an error means "the connection to the database was lost or
could not be made, try again": the same statement on a fresh connection may well succeed.
Everything else (SQL errors, constraint violations, a wrong password, a database that does not
exist, a lost lease) is not transient and must fail fast.

Transient:
- SQLAlchemy ``DBAPIError`` with ``connection_invalidated`` (SQLAlchemy saw a disconnect), and
  ``DisconnectionError``;
- PostgreSQL SQLSTATE class 08 (connection exception), 57P01 admin shutdown ("terminating
  connection due to administrator command"), 57P02 crash shutdown, 57P03 cannot connect now
  ("the database system is starting up / shutting down"), 53300 too many connections, and
  40001 / 40P01 (serialization failure, deadlock: PostgreSQL asks the client to rerun the
  transaction);
- a driver ``OperationalError`` / ``InterfaceError`` without SQLSTATE (client-side failures)
  whose message says the connection is gone or refused: "server closed the connection",
  "connection refused", "terminating connection", "connection is closed", "connection reset",
  "broken pipe", "timeout expired", ...
``registry.errors.DatabaseError`` (what ``Database`` turns connection failures into) is judged by
its cause. ``DatabaseUnavailable`` (retries already given up) is never transient again.

``RetryPolicy`` is the project's one backoff rule (also used by the HTTP client, downloads, the
job queue and the worker launcher). ``retry_call(fn, what=...)`` runs ``fn`` and reruns it after a
transient error with that backoff, logging one line when the database goes away and one when it is
back. After ``policy.deadline`` seconds of failures it raises ``DatabaseUnavailable``.
``fn`` must be safe to rerun: one whole transaction, idempotent or fenced (a retry may follow a
COMMIT whose outcome the client never learned).

Environment: ``CARLOS_REG_DB_RETRY_SECONDS`` (default 300): how long a process keeps retrying
before it gives up with an error; ``0`` turns retrying off.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, TypeVar

from registry.errors import CarlosError, DatabaseError, UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DEADLINE_SECONDS = 300.0

TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "40001", "40P01"}
TRANSIENT_SQLSTATE_CLASSES = {"08"}
TRANSIENT_MESSAGES = (
    "server closed the connection",
    "connection refused",
    "terminating connection",
    "connection is closed",
    "connection already closed",
    "connection is lost",
    "connection reset",
    "connection timed out",
    "could not connect to server",
    "could not receive data",
    "could not send data",
    "no connection to the server",
    "broken pipe",
    "ssl syscall error",
    "ssl connection has been closed",
    "eof detected",
    "timeout expired",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "consuming input failed",
    "sending query failed",
)


class DatabaseUnavailable(DatabaseError):
    """The database stayed unreachable for the whole retry deadline."""


@dataclass(frozen=True)
class RetryPolicy:
    """The one backoff rule of carlos-reg: HTTP requests, downloads, database operations, failed
    sign jobs and crashed workers all wait by it.

    The wait before try ``n + 1`` is ``min(cap, initial * factor**(n - 1))`` scaled by a random
    factor in ``[1 - jitter, 1]`` (processes failing together do not retry in lockstep; 0: exact).
    ``deadline``: give up after that many seconds of failures (None: never); ``max_attempts``:
    after that many tries, the first included (None: no limit). ``retry_after_max``: a server
    that asks (``Retry-After``) for a longer wait than this is not retried (None: any wait).

    ``delay`` is pure and answers for any ``n``, which is what the job queue and the worker
    launcher need: they do not loop, they schedule the next try.
    """

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 15.0
    jitter: float = 0.2
    deadline: float | None = DEFAULT_DEADLINE_SECONDS
    max_attempts: int | None = None
    retry_after_max: float | None = None

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before try ``attempt + 1``. A server's ``retry_after`` only ever lengthens
        the wait; None when it asks for more than ``retry_after_max``."""
        if (
            retry_after is not None
            and self.retry_after_max is not None
            and retry_after > self.retry_after_max
        ):
            return None
        ceiling = min(self.cap, self.initial * self.factor ** min(max(attempt - 1, 0), 62))
        wait = ceiling * (1.0 - self.jitter * (rng or random).random()) if self.jitter else ceiling
        return max(wait, retry_after or 0.0)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before tries 2, 3, ... (endless; ``deadline``/``max_attempts`` are the caller's)."""
        attempt = 1
        while True:
            yield self.delay(attempt, rng=rng)
            attempt += 1

    def gives_up_after(self, attempt: int) -> bool:
        """True when try ``attempt`` was the last one ``max_attempts`` allows."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def with_cap(self, cap: float) -> "RetryPolicy":
        return replace(self, cap=min(self.cap, cap), initial=min(self.initial, cap))

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        from registry.settings import environment

        raw = environment().get("CARLOS_REG_DB_RETRY_SECONDS")
        if raw is None or not raw.strip():
            return cls()
        try:
            seconds = float(raw)
        except ValueError:
            raise UsageError(
                f"CARLOS_REG_DB_RETRY_SECONDS={raw!r}: give a number of seconds (0: no retries)"
            ) from None
        if seconds < 0:
            raise UsageError(f"CARLOS_REG_DB_RETRY_SECONDS={raw!r}: must not be negative")
        return cls(deadline=seconds)


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return state if isinstance(state, str) else None


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` means the database connection was lost or could not be made (see module doc)."""
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DatabaseUnavailable):
            return False
        if isinstance(cur, DatabaseError):
            cur = cur.__cause__
            continue
        if isinstance(cur, CarlosError):  # LeaseLost, NotFound, ...: decisions, not outages
            return False
        if isinstance(cur, sa_exc.DisconnectionError):
            return True
        if isinstance(cur, sa_exc.DBAPIError):
            if cur.connection_invalidated:
                return True
            cur = cur.orig
            continue
        if isinstance(cur, sa_exc.SQLAlchemyError):
            return False
        return _driver_error_is_transient(cur)
    return False


def _driver_error_is_transient(exc: BaseException) -> bool:
    state = _sqlstate(exc)
    if state is not None:
        return state in TRANSIENT_SQLSTATES or state[:2] in TRANSIENT_SQLSTATE_CLASSES
    names = {c.__name__ for c in type(exc).__mro__}
    if not names & {"OperationalError", "InterfaceError"}:
        return False  # a programming error, a bad value, ...
    text = str(exc).lower()
    return any(m in text for m in TRANSIENT_MESSAGES)


def describe(exc: BaseException) -> str:
    """The innermost driver message, on one line: what to show in a log line."""
    from sqlalchemy import exc as sa_exc

    cur = exc
    while True:
        if isinstance(cur, sa_exc.DBAPIError) and cur.orig is not None:
            cur = cur.orig
        elif isinstance(cur, DatabaseError) and cur.__cause__ is not None:
            cur = cur.__cause__
        else:
            break
    lines = [ln.strip() for ln in str(cur).splitlines() if ln.strip()]
    return f"{type(cur).__name__}: {' '.join(lines)[:300]}" if lines else type(cur).__name__


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy | None = None,
    wait: Callable[[float], bool] | None = None,
    logger: logging.Logger | None = None,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn()``; after a transient database error wait and call it again (see module doc).

    ``wait(seconds)`` sleeps and returns True to abandon the retries (pass an Event's ``wait`` so a
    stop request cuts the backoff short); the last error is then raised as it is.
    Raises ``DatabaseUnavailable`` once ``policy.deadline`` seconds have passed since the first failure.
    """
    policy = policy or RetryPolicy.from_env()
    outage = _Outage(what, policy, logger or log, rng)
    wait = wait or _sleep
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not is_transient(exc) or policy.deadline == 0:
                raise
            if wait(outage.next_delay(exc)):
                raise
            continue
        outage.end()
        return result


@dataclass
class _Outage:
    """The failures of one ``retry_call``: when the first came, how many tries failed, the backoff
    still to come. Logs one warning when the database goes away, one line a further try, and one
    warning when it is back."""

    what: str
    policy: RetryPolicy
    logger: logging.Logger
    rng: random.Random | None
    failing_since: float | None = None
    tries: int = 0
    delays: Iterator[float] | None = None

    def next_delay(self, exc: Exception) -> float:
        """The wait before the next try after ``exc``; ``DatabaseUnavailable`` past the deadline."""
        policy = self.policy
        self.tries += 1
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            self.delays = policy.delays(self.rng)
        elapsed = now - self.failing_since
        if policy.deadline is not None and elapsed >= policy.deadline:
            raise DatabaseUnavailable(
                f"the registry database stayed unreachable for {elapsed:.0f} s ({self.what}); last error: "
                f"{describe(exc)}"
            ) from exc
        delay = next(self.delays)
        if policy.deadline is not None:
            delay = max(min(delay, policy.deadline - elapsed), 0.0)
        if self.tries == 1:
            self.logger.warning(
                "registry database unavailable (%s): %s; retrying with backoff up to %.0f s%s",
                self.what,
                describe(exc),
                policy.cap,
                "" if policy.deadline is None else f" for up to {policy.deadline:.0f} s",
            )
        else:
            self.logger.info(
                "registry database still unavailable (%s), try %d: %s; next in %.1f s",
                self.what,
                self.tries,
                describe(exc),
                delay,
            )
        return delay

    def end(self) -> None:
        """The call succeeded: say so if the database had been away."""
        if self.failing_since is not None:
            self.logger.warning(
                "registry database reachable again after %.1f s (%s)",
                time.monotonic() - self.failing_since,
                self.what,
            )


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False
