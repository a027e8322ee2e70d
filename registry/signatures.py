"""Writing signatures: one upsert per (version, profile), stamped with a registry-wide sequence.

Every write takes the next value of the ``signature`` change counter inside its transaction.
Incrementing the counter locks its row until commit, so sequence values become visible in
increasing order: a reader that has seen ``seq = n`` has seen every signature written before
it, and ``seq > n`` finds exactly what changed since (new and re-signed LoRAs alike).
Signatures are never deleted; an unusable one is kept with ``valid = False`` and flags.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session

from registry.models import ChangeCounter, Signature, utcnow
from registry.vectors import to_blob

COUNTER = "signature"
_LOOK_UP = object()


def reserve_seq(session: Session, count: int = 1) -> int:
    """Reserve ``count`` sequence values; returns the first. Holds the counter lock until commit."""
    stmt = (
        sa.update(ChangeCounter)
        .where(ChangeCounter.name == COUNTER)
        .values(value=ChangeCounter.value + count)
        .returning(ChangeCounter.value)
    )
    last = session.execute(stmt).scalar_one_or_none()
    if last is None:  # a database created before the counter row existed
        session.add(ChangeCounter(name=COUNTER, value=count))
        session.flush()
        last = count
    return int(last) - count + 1


def current_seq(session: Session) -> int:
    value = session.execute(
        sa.select(ChangeCounter.value).where(ChangeCounter.name == COUNTER)
    ).scalar_one_or_none()
    return int(value or 0)


def save_signature(
    session: Session,
    *,
    version_id: int,
    profile_id: int,
    direction,
    strength: float,
    consistency: float,
    seq: int | None = None,
    existing: Any = _LOOK_UP,
    **fields: Any,
) -> Signature:
    """Insert or replace the signature of a version under a profile.

    ``existing`` (the current row or None) saves a lookup when the caller already has it.
    """
    vec = np.asarray(direction, dtype=np.float32)
    values = dict(
        dim=int(vec.shape[0]),
        direction=to_blob(vec),
        strength=float(strength),
        consistency=float(consistency),
        seq=seq if seq is not None else reserve_seq(session),
        created_at=fields.pop("created_at", None) or utcnow(),
        **fields,
    )
    if existing is _LOOK_UP:
        existing = session.execute(
            sa.select(Signature).where(
                Signature.version_id == version_id, Signature.profile_id == profile_id
            )
        ).scalar_one_or_none()
    if existing is None:
        existing = Signature(version_id=version_id, profile_id=profile_id, **values)
        session.add(existing)
    else:
        for key, value in values.items():
            setattr(existing, key, value)
    return existing
