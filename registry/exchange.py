"""Signatures leaving the registry: ``export signatures --format carlos`` (the published parquet).

Contract:
- ``export_carlos(db, out, profile)`` writes the signatures of one profile in the published CARLoS
  database's format, columns and Arrow types exactly as ``import carlos`` reads them (version_id,
  model_id, model_name, model_description, model_nsfw_level, folder_name: int64/string;
  direction: list<double>; strength, consistency: double; model_download_count: int64). A
  signature that came from the published file carries that file's own row (``estimates.published``),
  so exporting the imported 740 gives back the published table value for value, in its order;
  other signatures are described from the registry (model and version rows). Directions must have
  512 values (CLIP ViT-B/32), else the profile cannot be written in this format.
- The file is written to a temp file beside ``out`` and renamed into place.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

import sqlalchemy as sa

from registry.db import Database
from registry.errors import CarlosError
from registry.models import Model, Signature, SignerProfile, Version
from registry.vectors import from_blob

CARLOS_DIM = 512


class ExportRefused(CarlosError):
    pass


def carlos_schema():
    import pyarrow as pa

    return pa.schema([("version_id", pa.int64()), ("model_id", pa.int64()), ("model_name", pa.string()),
                      ("model_description", pa.string()), ("model_nsfw_level", pa.int64()),
                      ("folder_name", pa.string()), ("direction", pa.list_(pa.field("element", pa.float64()))),
                      ("strength", pa.float64()), ("consistency", pa.float64()),
                      ("model_download_count", pa.int64())])


def profile_row(session, name: str) -> SignerProfile:
    rows = session.execute(sa.select(SignerProfile).where(SignerProfile.name == name)
                           .order_by(SignerProfile.id.desc())).scalars().all()
    if not rows:
        known = sorted(set(session.execute(sa.select(SignerProfile.name)).scalars()))
        raise ExportRefused(f"no signatures under a profile named {name!r} (profiles here: "
                            f"{', '.join(known) or 'none'})")
    return rows[0]


def _folder(name: str, version_id: int) -> str:
    """A folder name of the reference's shape (``<file stem>_<version id>``); display text only."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("_") or "lora"
    return f"{stem}_{version_id}"


def atomic_output(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-export-", dir=out.parent)
    os.close(fd)
    return Path(tmp)


def export_carlos(db: Database, out: str | os.PathLike, profile: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    with db.read() as s:
        prof = profile_row(s, profile)
        rows = s.execute(sa.select(Signature, Version, Model).join(Version, Version.id == Signature.version_id)
                         .outerjoin(Model, Model.id == Version.model_id)
                         .where(Signature.profile_id == prof.id)).all()
    records = []
    for sig, version, model in rows:
        if sig.dim != CARLOS_DIM:
            raise ExportRefused(f"profile {profile!r} has {sig.dim}-value directions (version {version.id}); the "
                                f"CARLoS format holds {CARLOS_DIM} (CLIP ViT-B/32): use --format bundle")
        published = (sig.estimates or {}).get("published") if sig.source == "imported" else None
        if published is not None:
            fields = {k: published.get(k) for k in ("model_id", "model_name", "model_description",
                                                     "model_nsfw_level", "folder_name", "model_download_count")}
            order = (0, published.get("row", 0), version.id)
        else:
            name = (model.name if model is not None else None) or version.name or f"version {version.id}"
            fields = {"model_id": version.model_id, "model_name": name,
                      "model_description": model.description if model is not None else None,
                      "model_nsfw_level": model.nsfw_level if model is not None else None,
                      "folder_name": _folder(version.name or name, version.id),
                      "model_download_count": model.download_count if model is not None else None}
            order = (1, 0, version.id)
        direction = from_blob(sig.direction, sig.dim).astype("float64").tolist()
        records.append((order, {"version_id": version.id, **fields, "direction": direction,
                                "strength": float(sig.strength), "consistency": float(sig.consistency)}))
    records.sort(key=lambda r: r[0])
    schema = carlos_schema()
    table = pa.Table.from_pylist([r for _, r in records], schema=schema)
    tmp = atomic_output(out)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return {"format": "carlos", "profile": prof.name, "profile_hash": prof.hash, "signatures": len(records),
            "out": str(out)}
