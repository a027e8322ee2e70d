"""Signatures leaving the registry: ``export signatures --format carlos|bundle``.

Contract:
- ``export_carlos(db, out, profile)`` writes the signatures of one profile in the published CARLoS
  database's format, columns and Arrow types exactly as ``import carlos`` reads them (version_id,
  model_id, model_name, model_description, model_nsfw_level, folder_name: int64/string;
  direction: list<double>; strength, consistency: double; model_download_count: int64). A
  signature that came from the published file carries that file's own row (``estimates.published``),
  so exporting the imported 740 gives back the published table value for value, in its order;
  other signatures are described from the registry (model and version rows). Directions must have
  512 values (CLIP ViT-B/32), else the profile cannot be written in this format.
- ``export_bundle(db, out, profile)`` writes every signature (or one profile's) as a bundle: one
  Parquet file marked ``format: carlos-reg-signatures``, ``version: 1`` (``bundle_schema``), each
  row with what identifies it anywhere (profile record, file hashes, Civitai ids). Reading and
  importing a bundle: ``registry.bundle_import``.
- Files are written whole or not at all (``registry.output.write_file``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import sqlalchemy as sa

from registry.db import Database
from registry.errors import CarlosError
from registry.importer import DIRECTION_DIM, PUBLISHED_FIELDS
from registry.models import Model, Signature, SignerProfile, Version
from registry.output import write_file
from registry.vectors import from_blob


class ExportRefused(CarlosError):
    pass


def profile_row(session, name: str) -> SignerProfile:
    rows = (
        session.execute(
            sa.select(SignerProfile)
            .where(SignerProfile.name == name)
            .order_by(SignerProfile.id.desc())
        )
        .scalars()
        .all()
    )
    if not rows:
        known = sorted(set(session.execute(sa.select(SignerProfile.name)).scalars()))
        raise ExportRefused(
            f"no signatures under a profile named {name!r} (profiles here: "
            f"{', '.join(known) or 'none'})"
        )
    return rows[0]


def parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# ---------------------------------------------------------------- the published CARLoS format


def carlos_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("version_id", pa.int64()),
            ("model_id", pa.int64()),
            ("model_name", pa.string()),
            ("model_description", pa.string()),
            ("model_nsfw_level", pa.int64()),
            ("folder_name", pa.string()),
            ("direction", pa.list_(pa.field("element", pa.float64()))),
            ("strength", pa.float64()),
            ("consistency", pa.float64()),
            ("model_download_count", pa.int64()),
        ]
    )


def _folder(name: str, version_id: int) -> str:
    """A folder name of the reference's shape (``<file stem>_<version id>``); display text only."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("_") or "lora"
    return f"{stem}_{version_id}"


def export_carlos(db: Database, out: str | os.PathLike, profile: str | None = None) -> dict:
    """``profile`` None: the imported published database's profile."""
    import pyarrow as pa

    from registry.profiles import IMPORTED_PROFILE_NAME

    profile = profile or IMPORTED_PROFILE_NAME
    out = Path(out)
    with db.read() as s:
        prof = profile_row(s, profile)
        rows = s.execute(
            sa.select(Signature, Version, Model)
            .join(Version, Version.id == Signature.version_id)
            .outerjoin(Model, Model.id == Version.model_id)
            .where(Signature.profile_id == prof.id)
        ).all()
    records = sorted(
        (_carlos_record(profile, sig, version, model) for sig, version, model in rows),
        key=lambda r: r[0],
    )
    table = pa.Table.from_pylist([r for _, r in records], schema=carlos_schema())
    write_file(out, parquet_bytes(table))
    return {
        "format": "carlos",
        "profile": prof.name,
        "profile_hash": prof.hash,
        "signatures": len(records),
        "out": str(out),
    }


def _carlos_record(profile: str, sig, version, model) -> tuple[tuple, dict]:
    """One signature as a row of the published table, with its sort key: the published rows first,
    in their own order, then the registry's by version id."""
    if sig.dim != DIRECTION_DIM:
        raise ExportRefused(
            f"profile {profile!r} has {sig.dim}-value directions (version {version.id}); the "
            f"CARLoS format holds {DIRECTION_DIM} (CLIP ViT-B/32): use --format bundle"
        )
    published = (sig.estimates or {}).get("published") if sig.source == "imported" else None
    if published is not None:
        fields = {k: published.get(k) for k in PUBLISHED_FIELDS}
        order = (0, published.get("row", 0), version.id)
    else:
        fields = _described_from_registry(version, model)
        order = (1, 0, version.id)
    direction = from_blob(sig.direction, sig.dim).astype("float64").tolist()
    return order, {
        "version_id": version.id,
        **fields,
        "direction": direction,
        "strength": float(sig.strength),
        "consistency": float(sig.consistency),
    }


def _described_from_registry(version, model) -> dict:
    """The published table's model fields of a signature made here, from the catalog rows."""
    name = (model.name if model is not None else None) or version.name or f"version {version.id}"
    return {
        "model_id": version.model_id,
        "model_name": name,
        "model_description": model.description if model is not None else None,
        "model_nsfw_level": model.nsfw_level if model is not None else None,
        "folder_name": _folder(version.name or name, version.id),
        "model_download_count": model.download_count if model is not None else None,
    }


# ---------------------------------------------------------------- bundles (registry to registry)

BUNDLE_FORMAT = "carlos-reg-signatures"
BUNDLE_VERSION = "1"
BUNDLE_COLUMNS = (
    "profile_name",
    "profile_hash",
    "profile_settings",
    "file_sha256",
    "file_autov2",
    "civitai_model_id",
    "civitai_version_id",
    "version_id",
    "name",
    "base_model",
    "dim",
    "direction",
    "strength",
    "consistency",
    "n_samples",
    "valid",
    "flags",
    "estimates",
    "source",
    "code_version",
)


def bundle_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("profile_name", pa.string()),
            ("profile_hash", pa.string()),
            ("profile_settings", pa.string()),
            ("file_sha256", pa.string()),
            ("file_autov2", pa.string()),
            ("civitai_model_id", pa.int64()),
            ("civitai_version_id", pa.int64()),
            ("version_id", pa.int64()),
            ("name", pa.string()),
            ("base_model", pa.string()),
            ("dim", pa.int32()),
            ("direction", pa.list_(pa.float32())),
            ("strength", pa.float64()),
            ("consistency", pa.float64()),
            ("n_samples", pa.int64()),
            ("valid", pa.bool_()),
            ("flags", pa.string()),
            ("estimates", pa.string()),
            ("source", pa.string()),
            ("code_version", pa.string()),
        ],
        metadata={"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION},
    )


def export_bundle(db: Database, out: str | os.PathLike, profile: str | None = None) -> dict:
    """Every signature (or one profile's) with what identifies it anywhere: profile record, file
    hashes, Civitai ids. Written whole, then renamed into place."""
    import pyarrow as pa

    out = Path(out)
    with db.read() as s:
        q = (
            sa.select(Signature, Version, SignerProfile)
            .join(Version, Version.id == Signature.version_id)
            .join(SignerProfile, SignerProfile.id == Signature.profile_id)
        )
        if profile is not None:
            q = q.where(SignerProfile.id == profile_row(s, profile).id)
        # the order signatures were written: kept in B
        rows = s.execute(q.order_by(Signature.id)).all()
        autov2 = _autov2_by_sha256(s, {sig.file_sha256 for sig, _, _ in rows if sig.file_sha256})
    records = [_bundle_record(sig, version, prof, autov2) for sig, version, prof in rows]
    table = pa.Table.from_pylist(records, schema=bundle_schema())
    write_file(out, parquet_bytes(table))
    return {
        "format": "bundle",
        "profile": profile,
        "signatures": len(records),
        "out": str(out),
        "profiles": sorted({r["profile_name"] for r in records}),
    }


def _autov2_by_sha256(s, shas: set[str]) -> dict[str, str]:
    """The AutoV2 hashes the registry knows for these files (asked 500 at a time)."""
    from registry.models import File

    shas = sorted(shas)
    autov2 = {}
    for i in range(0, len(shas), 500):
        autov2.update(
            {
                r.sha256: r.autov2
                for r in s.execute(
                    sa.select(File.sha256, File.autov2).where(
                        File.sha256.in_(shas[i : i + 500]), File.autov2.is_not(None)
                    )
                )
            }
        )
    return autov2


def _bundle_record(sig, version, prof, autov2: dict[str, str]) -> dict:
    from registry import __version__
    from registry.profile_identity import canonical_json

    civitai = version.id > 0 and version.source != "local"
    estimates = dict(sig.estimates or {})
    return {
        "profile_name": prof.name,
        "profile_hash": prof.hash,
        "profile_settings": canonical_json(prof.settings),
        "file_sha256": sig.file_sha256,
        "file_autov2": autov2.get(sig.file_sha256)
        or (sig.file_sha256[:10].upper() if sig.file_sha256 else None),
        "civitai_model_id": version.model_id if civitai else None,
        "civitai_version_id": version.id if civitai else None,
        "version_id": version.id,
        "name": version.name,
        "base_model": version.base_model,
        "dim": sig.dim,
        "direction": from_blob(sig.direction, sig.dim),
        "strength": float(sig.strength),
        "consistency": float(sig.consistency),
        "n_samples": int(sig.n_samples),
        "valid": bool(sig.valid),
        "flags": canonical_json(list(sig.flags or [])),
        "estimates": canonical_json(estimates),
        "source": sig.source,
        "code_version": estimates.get("code_version")
        or (
            f"carlos-reg {__version__} (export)"
            if sig.source != "imported"
            else "published CARLoS database"
        ),
    }
