"""A minimal queue consumer run as a separate process by the queue tests.

    python -m tests.queue_worker DB_URL LOG_FILE drain [LEASE_SECONDS]
    python -m tests.queue_worker DB_URL LOG_FILE hold  [LEASE_SECONDS]

``drain`` claims jobs until none is left; each completion writes a signature row in the same
transaction as ``complete`` and is then appended to LOG_FILE. ``hold`` claims one job, prints
its id and sleeps (to be killed).
"""

from __future__ import annotations

import sys
import time

from registry.db import Database
from registry.models import Signature
from registry.queue import JobQueue, worker_name
from registry.vectors import to_blob


def main() -> None:
    url, log_path, mode = sys.argv[1:4]
    lease_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    db = Database(url)
    queue = JobQueue(db, lease_seconds=lease_seconds, backoff_seconds=0.0)
    owner = worker_name()
    if mode == "hold":
        lease = queue.claim(owner)
        print(lease.job_id, flush=True)
        time.sleep(3600)
        return
    with open(log_path, "a") as log:
        while True:
            lease = queue.claim(owner)
            if lease is None:
                break
            with db.write() as session:
                session.add(
                    Signature(
                        version_id=lease.version_id,
                        profile_id=lease.profile_id,
                        dim=2,
                        direction=to_blob([1.0, 0.0]),
                        strength=1.0,
                        consistency=1.0,
                        job_id=lease.job_id,
                    )
                )
                queue.complete(session, lease)
            log.write(f"{lease.job_id}\n")
            log.flush()


if __name__ == "__main__":
    main()
