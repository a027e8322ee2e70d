"""Import of the published CARLoS signature database (``metrics_database.parquet``).

The whole file is validated before anything is written, then written in one transaction:
a missing column, a vector of the wrong length, a NaN or a duplicate version id refuses the
file whole. Re-importing the same file changes nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from registry.db import Database
from registry.errors import CarlosError
from registry.models import NSFW_LEVEL_BITS, Model, Signature, Version, utcnow
from registry.profile_identity import PUBLISHED_SETTINGS
from registry.profiles import IMPORTED_PROFILE_NAME, adopt_profile
from registry.signatures import reserve_seq, save_signature
from registry.vectors import to_blob

REQUIRED_COLUMNS = (
    "version_id",
    "model_id",
    "model_name",
    "model_description",
    "model_nsfw_level",
    "folder_name",
    "direction",
    "strength",
    "consistency",
    "model_download_count",
)
PUBLISHED_FIELDS = (
    "model_id",
    "model_name",
    "model_description",
    "model_nsfw_level",
    "folder_name",
    "model_download_count",
)
DIRECTION_DIM = 512
PAPER_SAMPLES = 280 * 16

IMPORTED_PROFILE_SETTINGS = {
    **PUBLISHED_SETTINGS,
    "origin": "published CARLoS metrics_database.parquet",
}


class ImportRefused(CarlosError):
    pass


@dataclass
class ImportRow:
    version_id: int
    model_id: int | None
    name: str
    description: str | None
    nsfw_level: int | None
    download_count: int | None
    direction: np.ndarray
    strength: float
    consistency: float
    published: dict | None = (
        None  # the row's own fields as the file gives them (``export --format carlos``)
    )


def read_carlos_parquet(path: str | Path) -> list[ImportRow]:
    path = Path(path)
    table = _read_table(path)
    cols = {c: table.column(c).to_pylist() for c in REQUIRED_COLUMNS}
    rows, seen = [], set()
    for i in range(table.num_rows):
        rows.append(_checked_row(path.name, cols, i, seen))
    return rows


def _read_table(path: Path):
    """The file's table, once it reads as Parquet and has every column the format defines."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise ImportRefused(
            f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ImportRefused(f"{path}: missing column(s) {', '.join(missing)}; nothing was imported")
    return table


def _checked_row(file_name: str, cols: dict, i: int, seen: set) -> ImportRow:
    """Row ``i``, checked (``seen``: the version ids of earlier rows) and decoded."""
    where = f"{file_name} row {i}"
    vid = cols["version_id"][i]
    if not isinstance(vid, int) or isinstance(vid, bool):
        raise ImportRefused(f"{where}: version_id {vid!r} is not an integer; nothing was imported")
    if vid in seen:
        raise ImportRefused(f"{where}: version_id {vid} appears twice; nothing was imported")
    seen.add(vid)
    where += f" (version {vid})"
    direction = _checked_direction(where, cols["direction"][i])
    values = {}
    for name in ("strength", "consistency"):
        v = cols[name][i]
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ImportRefused(
                f"{where}: {name} is {v!r}, not a finite number; nothing was imported"
            )
        values[name] = float(v)
    folder = cols["folder_name"][i] or ""
    model_name = (cols["model_name"][i] or "").strip()
    return ImportRow(
        version_id=vid,
        model_id=cols["model_id"][i],
        name=model_name or stem_name(folder, vid) or f"version {vid}",
        description=cols["model_description"][i] or None,
        nsfw_level=cols["model_nsfw_level"][i],
        download_count=cols["model_download_count"][i],
        direction=direction.astype(np.float32),
        strength=values["strength"],
        consistency=values["consistency"],
        published={"row": i, **{c: cols[c][i] for c in PUBLISHED_FIELDS}},
    )


def _checked_direction(where: str, vec) -> np.ndarray:
    if vec is None or len(vec) != DIRECTION_DIM:
        n = "no" if vec is None else len(vec)
        raise ImportRefused(
            f"{where}: direction has {n} values, expected {DIRECTION_DIM}; nothing was imported"
        )
    direction = np.asarray([np.nan if v is None else v for v in vec], dtype=np.float64)
    if not np.all(np.isfinite(direction)):
        raise ImportRefused(
            f"{where}: direction contains NaN or infinite values; nothing was imported"
        )
    return direction


def stem_name(folder_name: str, version_id: int) -> str:
    """``"PerfectEyesXL_128461"`` → ``"PerfectEyesXL"`` (the folder is the file stem + ``_<version id>``)."""
    return re.sub(rf"_{version_id}$", "", folder_name.strip())


def import_carlos(db: Database, path: str | Path) -> dict:
    rows = read_carlos_parquet(path)
    counts = {
        "rows": len(rows),
        "versions_added": 0,
        "models_added": 0,
        "signatures_added": 0,
        "signatures_updated": 0,
        "unchanged": 0,
    }
    now = utcnow()
    with db.write() as session:
        profile = adopt_profile(session, IMPORTED_PROFILE_NAME, IMPORTED_PROFILE_SETTINGS)
        sigs = _held_signatures(session, profile.id, [r.version_id for r in rows])
        _add_catalog_rows(session, rows, counts, now)
        changed = []
        for r in rows:
            sig = sigs.get(r.version_id)
            if sig is not None and _same_signature(sig, r):
                counts["unchanged"] += 1
            else:
                changed.append(r)
                counts["signatures_updated" if sig is not None else "signatures_added"] += 1
        first_seq = reserve_seq(session, len(changed)) if changed else 0
        for offset, r in enumerate(changed):
            save_signature(
                session,
                version_id=r.version_id,
                profile_id=profile.id,
                direction=r.direction,
                strength=r.strength,
                consistency=r.consistency,
                seq=first_seq + offset,
                existing=sigs.get(r.version_id),
                n_samples=PAPER_SAMPLES,
                valid=True,
                flags=[],
                estimates={"published": r.published},
                source="imported",
                created_at=now,
            )
    counts["profile"] = IMPORTED_PROFILE_NAME
    return counts


def _held_signatures(session, profile_id: int, version_ids: list[int]) -> dict[int, Signature]:
    """The imported profile's signatures already held for these versions, by version id."""
    return {
        s.version_id: s
        for s in session.exec(
            sa.select(Signature).where(
                Signature.profile_id == profile_id, Signature.version_id.in_(version_ids)
            )
        ).scalars()
    }


def _add_catalog_rows(session, rows: list[ImportRow], counts: dict, now) -> None:
    """The models and versions the file names that the catalog does not hold yet."""
    ids = [r.version_id for r in rows]
    versions = {
        v.id: v for v in session.exec(sa.select(Version).where(Version.id.in_(ids))).scalars()
    }
    model_ids = {r.model_id for r in rows if r.model_id is not None}
    models = {
        m.id: m for m in session.exec(sa.select(Model).where(Model.id.in_(model_ids))).scalars()
    }
    created = dict(source="carlos", first_seen_at=now, updated_at=now)  # rows this import adds
    for r in rows:
        if r.model_id is not None and r.model_id not in models:
            models[r.model_id] = Model(
                id=r.model_id,
                name=r.name,
                description=r.description,
                nsfw_level=r.nsfw_level,
                nsfw=bool((r.nsfw_level or 0) & NSFW_LEVEL_BITS),
                download_count=r.download_count,
                **created,
            )
            session.add(models[r.model_id])
            counts["models_added"] += 1
        if r.version_id not in versions:
            versions[r.version_id] = Version(
                id=r.version_id,
                model_id=r.model_id,
                name=r.name,
                **created,
            )
            session.add(versions[r.version_id])
            counts["versions_added"] += 1
    session.flush()


def _same_signature(sig: Signature, r: ImportRow) -> bool:
    """The held signature is this row's, published fields included: re-importing changes nothing."""
    return (
        sig.direction == to_blob(r.direction)
        and sig.strength == r.strength
        and sig.consistency == r.consistency
        and (sig.estimates or {}).get("published") == r.published
    )
