"""The lease heartbeat of a running signing job.

Contract: ``Heartbeat(queue, lease)`` is a daemon thread that renews the lease every third of its
length until ``stop()``. A heartbeat that cannot reach the database keeps trying (only a token
mismatch is a lost lease: ``lost``); a non-transient failure sets ``error`` and ends the beat. The
worker checks both between UNet steps.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from registry.errors import LeaseLost
from registry.queue import JobQueue, Lease
from registry.retry import describe, is_transient, retry_call

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Renews a lease every third of its length until stopped.

    ``lost``: the token no longer holds (another worker has the job). An unreachable database is
    not a lost lease: the beat is retried with backoff capped at the beat interval, for as long
    as the job runs. ``error``: a non-transient failure (the job should stop).
    """

    def __init__(self, queue: JobQueue, lease: Lease):
        super().__init__(daemon=True, name=f"heartbeat-{lease.job_id}")
        self.queue, self.lease = queue, lease
        self.lost = False
        self.error: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = max(self.queue.lease_seconds / 3.0, 0.05)
        policy = self.queue.retry_policy.with_cap(interval)
        if policy.deadline != 0:
            policy = replace(policy, deadline=None)
        what = f"heartbeat of job {self.lease.job_id}"
        while not self._stop_event.wait(interval):
            try:
                self.lease = retry_call(
                    lambda: self.queue.heartbeat(self.lease, retry=False),
                    what=what,
                    policy=policy,
                    wait=self._stop_event.wait,
                )
            except LeaseLost:
                self.lost = True
                return
            except Exception as exc:
                if self._stop_event.is_set():
                    return
                if is_transient(exc):  # retries are off: try again at the next beat
                    log.warning("%s failed: %s", what, describe(exc))
                    continue
                self.error = describe(exc)
                log.error("%s failed: %s; stopping the job", what, self.error)
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
