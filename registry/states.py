"""The states a sign job and a LoRA file go through, as stored in the database.

``StrEnum`` members are the very strings in the ``state`` columns (``JobState.DEAD == "dead"``),
so rows, JSON output and SQL text are unchanged; code compares and binds the members.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """``sign_job.state``: queued → running (leased) → done, back to queued (retry), or dead."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


class FileState(StrEnum):
    """``file.state``: where a LoRA file stands in download and verification."""

    PENDING = "pending"
    VERIFIED = "verified"  # SHA-256 checked; usable
    FAILED = "failed"  # retried by the next crawl
    UNSUPPORTED = "unsupported"  # pickle formats and other files the signer never loads
    QUARANTINED = "quarantined"  # hash mismatch or a header that fails screening
    SKIPPED = "skipped"
    DEFERRED = "deferred"  # early access: not attempted until it is public
    UNAVAILABLE = "unavailable"  # the model is Archived or TakenDown on Civitai
