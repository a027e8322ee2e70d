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
- Files are written whole or not at all (``registry.output.write_file``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import sqlalchemy as sa

from registry.db import Database
from registry.errors import CarlosError, first_line
from registry.models import Model, Signature, SignerProfile, Version
from registry.output import write_file
from registry.queries import next_local_version_id
from registry.states import FileState
from registry.vectors import from_blob

CARLOS_DIM = 512


class ExportRefused(CarlosError):
    pass


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


def _folder(name: str, version_id: int) -> str:
    """A folder name of the reference's shape (``<file stem>_<version id>``); display text only."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("_") or "lora"
    return f"{stem}_{version_id}"


def _parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


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
    records = []
    for sig, version, model in rows:
        if sig.dim != CARLOS_DIM:
            raise ExportRefused(
                f"profile {profile!r} has {sig.dim}-value directions (version {version.id}); the "
                f"CARLoS format holds {CARLOS_DIM} (CLIP ViT-B/32): use --format bundle"
            )
        published = (sig.estimates or {}).get("published") if sig.source == "imported" else None
        if published is not None:
            fields = {
                k: published.get(k)
                for k in (
                    "model_id",
                    "model_name",
                    "model_description",
                    "model_nsfw_level",
                    "folder_name",
                    "model_download_count",
                )
            }
            order = (0, published.get("row", 0), version.id)
        else:
            name = (
                (model.name if model is not None else None)
                or version.name
                or f"version {version.id}"
            )
            fields = {
                "model_id": version.model_id,
                "model_name": name,
                "model_description": model.description if model is not None else None,
                "model_nsfw_level": model.nsfw_level if model is not None else None,
                "folder_name": _folder(version.name or name, version.id),
                "model_download_count": model.download_count if model is not None else None,
            }
            order = (1, 0, version.id)
        direction = from_blob(sig.direction, sig.dim).astype("float64").tolist()
        records.append(
            (
                order,
                {
                    "version_id": version.id,
                    **fields,
                    "direction": direction,
                    "strength": float(sig.strength),
                    "consistency": float(sig.consistency),
                },
            )
        )
    records.sort(key=lambda r: r[0])
    schema = carlos_schema()
    table = pa.Table.from_pylist([r for _, r in records], schema=schema)
    write_file(out, _parquet_bytes(table))
    return {
        "format": "carlos",
        "profile": prof.name,
        "profile_hash": prof.hash,
        "signatures": len(records),
        "out": str(out),
    }


# ---------------------------------------------------------------- bundles (registry to registry)

BUNDLE_FORMAT = "carlos-reg-signatures"
BUNDLE_VERSION = "1"
MAX_BUNDLE_BYTES = 1 << 30  # 1 GiB: about a million 512-value signatures
# CLIP image-feature widths of the open_clip architectures a profile can name (raw features)
CLIP_DIMS = {
    "ViT-B-32": 512,
    "ViT-B-32-quickgelu": 512,
    "ViT-B-16": 512,
    "ViT-B-16-quickgelu": 512,
    "ViT-L-14": 768,
    "ViT-L-14-quickgelu": 768,
    "ViT-L-14-336": 768,
    "ViT-H-14": 1024,
    "ViT-H-14-quickgelu": 1024,
    "ViT-g-14": 1024,
    "ViT-bigG-14": 1280,
}
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


class BundleRefused(CarlosError):
    pass


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

    from registry import __version__
    from registry.models import File
    from registry.profile_identity import canonical_json

    out = Path(out)
    with db.read() as s:
        q = (
            sa.select(Signature, Version, SignerProfile)
            .join(Version, Version.id == Signature.version_id)
            .join(SignerProfile, SignerProfile.id == Signature.profile_id)
        )
        if profile is not None:
            q = q.where(SignerProfile.id == profile_row(s, profile).id)
        rows = s.execute(
            q.order_by(Signature.id)
        ).all()  # the order signatures were written: kept in B
        autov2 = {}
        shas = sorted({sig.file_sha256 for sig, _, _ in rows if sig.file_sha256})
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
    records = []
    for sig, version, prof in rows:
        civitai = version.id > 0 and version.source != "local"
        estimates = dict(sig.estimates or {})
        records.append(
            {
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
        )
    table = pa.Table.from_pylist(records, schema=bundle_schema())
    write_file(out, _parquet_bytes(table))
    return {
        "format": "bundle",
        "profile": profile,
        "signatures": len(records),
        "out": str(out),
        "profiles": sorted({r["profile_name"] for r in records}),
    }


def read_bundle(path: str | os.PathLike) -> list[dict]:
    """The rows of a bundle, validated whole; ``BundleRefused`` (one line) at the first problem."""
    path = Path(path)
    table = _read_bundle_table(path)
    cols = {c: table.column(c).to_pylist() for c in BUNDLE_COLUMNS if c != "direction"}
    directions = table.column("direction")
    rows: list[dict] = []
    keys: set = set()
    dims: dict = {}
    for i in range(table.num_rows):
        vec = (
            directions[i].values.to_numpy(zero_copy_only=False) if directions[i].is_valid else None
        )
        rows.append(
            _checked_row(f"{path.name} row {i}", {c: cols[c][i] for c in cols}, vec, keys, dims)
        )
    return rows


def _read_bundle_table(path: Path):
    """The bundle's columns, once its size, format mark, version and schema are what they must be."""
    import pyarrow.parquet as pq

    name = path.name
    if not path.is_file():
        raise BundleRefused(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_BUNDLE_BYTES:
        raise BundleRefused(
            f"{name}: {size / 2**30:.1f} GiB is over the {MAX_BUNDLE_BYTES / 2**30:.0f} GiB limit "
            "for a signature bundle; nothing was imported"
        )
    try:
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.metadata or {}
        if meta.get(b"format") != BUNDLE_FORMAT.encode():
            raise BundleRefused(
                f"{name}: not a carlos-reg signature bundle (no format mark; a published database "
                "goes through `import carlos`); nothing was imported"
            )
        if meta.get(b"version") != BUNDLE_VERSION.encode():
            raise BundleRefused(
                f"{name}: bundle version {meta.get(b'version', b'?').decode(errors='replace')!r} is "
                f"not {BUNDLE_VERSION!r}; nothing was imported"
            )
        expected = bundle_schema()
        for field in expected:
            if field.name not in pf.schema_arrow.names:
                raise BundleRefused(f"{name}: missing column {field.name}; nothing was imported")
            if not pf.schema_arrow.field(field.name).type.equals(field.type):
                raise BundleRefused(
                    f"{name}: column {field.name} is {pf.schema_arrow.field(field.name).type}, "
                    f"expected {field.type}; nothing was imported"
                )
        return pf.read(columns=list(BUNDLE_COLUMNS))
    except BundleRefused:
        raise
    except Exception as exc:  # truncated, junk, a different format: pyarrow says which
        detail = first_line(exc, limit=160, default=type(exc).__name__)
        raise BundleRefused(
            f"{name}: not a readable Parquet bundle ({detail}); nothing was imported"
        ) from None


def _checked_row(where: str, r: dict, vec, keys: set, dims: dict) -> dict:
    """One row, checked (``keys`` and ``dims`` carry what earlier rows claimed) and decoded."""
    import json
    import math

    import numpy as np

    from registry.profile_identity import profile_hash

    try:
        settings = json.loads(r["profile_settings"] or "")
    except ValueError:
        raise BundleRefused(
            f"{where}: profile_settings is not JSON; nothing was imported"
        ) from None
    if not isinstance(settings, dict) or not r["profile_name"]:
        raise BundleRefused(f"{where}: the profile record is incomplete; nothing was imported")
    if profile_hash(r["profile_name"], settings) != r["profile_hash"]:
        raise BundleRefused(
            f"{where}: profile hash {str(r['profile_hash'])[:12]}… does not match the profile's "
            f"name and settings (edited or corrupted); nothing was imported"
        )
    sha = r["file_sha256"]
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise BundleRefused(
            f"{where}: file_sha256 is not 64 lowercase hex digits; nothing was imported"
        )
    if sha is None and r["civitai_version_id"] is None:
        raise BundleRefused(
            f"{where}: neither a file SHA-256 nor a Civitai version id: the signature "
            "cannot be placed; nothing was imported"
        )
    if vec is None or r["dim"] is None or len(vec) != r["dim"] or r["dim"] <= 0:
        raise BundleRefused(
            f"{where}: direction has {0 if vec is None else len(vec)} values, dim says "
            f"{r['dim']}; nothing was imported"
        )
    want = CLIP_DIMS.get(str(settings.get("clip_model")))
    if want is not None and r["dim"] != want:
        raise BundleRefused(
            f"{where}: {r['dim']}-value direction, but the profile's CLIP "
            f"{settings.get('clip_model')} has {want}; nothing was imported"
        )
    if dims.setdefault(r["profile_hash"], r["dim"]) != r["dim"]:
        raise BundleRefused(
            f"{where}: profile {r['profile_name']!r} has directions of two widths "
            f"({dims[r['profile_hash']]} and {r['dim']}); nothing was imported"
        )
    if not np.all(np.isfinite(vec)):
        raise BundleRefused(
            f"{where}: direction contains NaN or infinite values; nothing was imported"
        )
    for f in ("strength", "consistency"):
        if r[f] is None or not math.isfinite(r[f]):
            raise BundleRefused(
                f"{where}: {f} is {r[f]!r}, not a finite number; nothing was imported"
            )
    key = (r["profile_hash"], sha, r["civitai_version_id"] if sha is None else None)
    if key in keys:
        raise BundleRefused(
            f"{where}: a second signature for the same file and profile; nothing was imported"
        )
    keys.add(key)
    try:
        r["flags"], r["estimates"] = (
            json.loads(r["flags"] or "[]"),
            json.loads(r["estimates"] or "{}"),
        )
    except ValueError:
        raise BundleRefused(
            f"{where}: flags or estimates are not JSON; nothing was imported"
        ) from None
    r["settings"], r["direction"] = settings, np.asarray(vec, dtype=np.float32)
    return r


def import_bundle(db: Database, path: str | os.PathLike, *, replace: bool = False) -> dict:
    """Validate the whole bundle, then write it in one transaction (see ``read_bundle``).

    A signature lands on the version with its Civitai id, else on a version whose file has its
    SHA-256, else on a new version (the Civitai id, or a local one holding the file's hash so a
    later ``scan`` finds it). An existing different signature for (version, profile) is a
    conflict, kept unless ``replace``; an equal one is unchanged.
    """
    from registry.models import File, Model, utcnow
    from registry.profiles import get_or_create_profile
    from registry.signatures import save_signature
    from registry.vectors import to_blob

    rows = read_bundle(path)
    counts = {
        "rows": len(rows),
        "added": 0,
        "replaced": 0,
        "unchanged": 0,
        "conflicts": 0,
        "versions_added": 0,
    }
    conflicts = []
    now = utcnow()
    with db.write() as s:
        for digest, dim in sorted({(r["profile_hash"], r["dim"]) for r in rows}):
            held = s.execute(
                sa.select(Signature.dim)
                .join(SignerProfile, SignerProfile.id == Signature.profile_id)
                .where(SignerProfile.hash == digest)
                .limit(1)
            ).scalar()
            if held is not None and held != dim:
                raise BundleRefused(
                    f"{Path(path).name}: profile {digest[:12]}… has {dim}-value directions in the "
                    f"bundle but {held}-value ones here; nothing was imported"
                )
        for r in rows:
            prof = get_or_create_profile(s, r["profile_name"], r["settings"])
            vid = _place(s, r, counts, now, Model, File)
            sig = (
                s.execute(
                    sa.select(Signature).where(
                        Signature.version_id == vid, Signature.profile_id == prof.id
                    )
                )
                .scalars()
                .first()
            )
            same = (
                sig is not None
                and sig.direction == to_blob(r["direction"])
                and sig.strength == r["strength"]
                and sig.consistency == r["consistency"]
            )
            if same:
                counts["unchanged"] += 1
                continue
            if sig is not None and not replace:
                counts["conflicts"] += 1
                conflicts.append(
                    {"version_id": vid, "profile": prof.name, "file_sha256": r["file_sha256"]}
                )
                continue
            counts["replaced" if sig is not None else "added"] += 1
            save_signature(
                s,
                version_id=vid,
                profile_id=prof.id,
                direction=r["direction"],
                strength=r["strength"],
                consistency=r["consistency"],
                n_samples=int(r["n_samples"] or 0),
                valid=bool(r["valid"]),
                flags=list(r["flags"]),
                estimates={
                    **r["estimates"],
                    "bundle_source": r["source"],
                    "code_version": r["code_version"],
                },
                file_sha256=r["file_sha256"],
                ensemble_path=None,
                job_id=None,
                source="bundle",
                existing=sig,
            )
            s.flush()
    counts["conflict_list"] = conflicts
    return counts


def _place(s, r: dict, counts: dict, now, Model, File) -> int:
    cid, sha = r["civitai_version_id"], r["file_sha256"]
    if cid is not None and s.get(Version, cid) is not None:
        return cid
    if sha is not None:
        hit = s.execute(
            sa.select(Version.id)
            .join(File, File.version_id == Version.id)
            .where(File.sha256 == sha)
            .order_by((Version.source == "local").asc(), sa.func.abs(Version.id))
        ).first()
        if hit is not None:
            return hit.id
    counts["versions_added"] += 1
    if cid is not None:
        mid = r["civitai_model_id"]
        if mid is not None and s.get(Model, mid) is None:
            s.add(
                Model(
                    id=mid, name=r["name"] or "", source="bundle", first_seen_at=now, updated_at=now
                )
            )
            s.flush()
        s.add(
            Version(
                id=cid,
                model_id=mid,
                name=r["name"] or "",
                base_model=r["base_model"],
                source="bundle",
                first_seen_at=now,
                updated_at=now,
            )
        )
        s.flush()
        return cid
    vid = next_local_version_id(s)
    s.add(
        Version(
            id=vid,
            name=r["name"] or "",
            base_model=r["base_model"],
            source="local",
            first_seen_at=now,
            updated_at=now,
        )
    )
    s.flush()
    s.add(
        File(
            version_id=vid,
            name=r["name"] or "",
            primary=True,
            sha256=sha,
            autov2=r["file_autov2"],
            state=FileState.SKIPPED,
            error="known from a signature bundle; no file here yet (scan a folder holding it)",
            updated_at=now,
        )
    )
    s.flush()
    return vid
