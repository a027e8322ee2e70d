"""Signatures entering the registry from a bundle: ``import signatures BUNDLE [--replace]``.

Contract:
- ``read_bundle(path)`` validates the whole file before anything is written: its size (at most
  1 GiB), the format mark and version ``registry.exchange.bundle_schema`` writes, every column's
  Arrow type, and every row (a profile record whose hash matches its name and settings, a file
  SHA-256 or a Civitai version id to place it by, a finite direction of the width the profile's
  CLIP model gives, finite strength and consistency, one signature per file and profile).
  The first problem refuses the file whole with ``BundleRefused`` (one line, the row named).
- ``import_bundle(db, path, replace=)`` then writes it in one transaction; see its docstring for
  where each signature lands. The bundle's data is text: it names no path that is opened.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from registry.db import Database
from registry.errors import CarlosError, first_line
from registry.exchange import BUNDLE_COLUMNS, BUNDLE_FORMAT, BUNDLE_VERSION, bundle_schema
from registry.models import File, Model, Signature, SignerProfile, Version, utcnow
from registry.queries import next_local_version_id
from registry.states import FileState

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


class BundleRefused(CarlosError):
    pass


# ---------------------------------------------------------------- reading and validating


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
        _check_bundle_schema(name, pf.schema_arrow)
        return pf.read(columns=list(BUNDLE_COLUMNS))
    except BundleRefused:
        raise
    except Exception as exc:  # truncated, junk, a different format: pyarrow says which
        detail = first_line(exc, limit=160, default=type(exc).__name__)
        raise BundleRefused(
            f"{name}: not a readable Parquet bundle ({detail}); nothing was imported"
        ) from None


def _check_bundle_schema(name: str, schema) -> None:
    """The format mark, the version and every column's type are the ones ``bundle_schema`` writes."""
    meta = schema.metadata or {}
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
    for field in bundle_schema():
        if field.name not in schema.names:
            raise BundleRefused(f"{name}: missing column {field.name}; nothing was imported")
        if not schema.field(field.name).type.equals(field.type):
            raise BundleRefused(
                f"{name}: column {field.name} is {schema.field(field.name).type}, "
                f"expected {field.type}; nothing was imported"
            )


def _checked_row(where: str, r: dict, vec, keys: set, dims: dict) -> dict:
    """One row, checked (``keys`` and ``dims`` carry what earlier rows claimed) and decoded."""
    settings = _checked_profile(where, r)
    _check_placeable(where, r)
    _check_direction(where, r, vec, settings, dims)
    for f in ("strength", "consistency"):
        if r[f] is None or not math.isfinite(r[f]):
            raise BundleRefused(
                f"{where}: {f} is {r[f]!r}, not a finite number; nothing was imported"
            )
    sha = r["file_sha256"]
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


def _checked_profile(where: str, r: dict) -> dict:
    """The row's profile settings, once the record is complete and its hash is its own."""
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
    return settings


def _check_placeable(where: str, r: dict) -> None:
    """A well-formed file SHA-256 or a Civitai version id: something to place the signature by."""
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


def _check_direction(where: str, r: dict, vec, settings: dict, dims: dict) -> None:
    """``dim`` finite values, the width of the profile's CLIP model and of its other rows."""
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


# ---------------------------------------------------------------- writing


def import_bundle(db: Database, path: str | os.PathLike, *, replace: bool = False) -> dict:
    """Validate the whole bundle, then write it in one transaction (see ``read_bundle``).

    A signature lands on the version with its Civitai id, else on a version whose file has its
    SHA-256, else on a new version (the Civitai id, or a local one holding the file's hash so a
    later ``scan`` finds it). An existing different signature for (version, profile) is a
    conflict, kept unless ``replace``; an equal one is unchanged.
    """
    from registry.profiles import get_or_create_profile

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
        _check_widths_held(s, rows, Path(path).name)
        for r in rows:
            prof = get_or_create_profile(s, r["profile_name"], r["settings"])
            vid = _place(s, r, counts, now)
            sig = (
                s.execute(
                    sa.select(Signature).where(
                        Signature.version_id == vid, Signature.profile_id == prof.id
                    )
                )
                .scalars()
                .first()
            )
            outcome = _outcome(sig, r, replace)
            counts[outcome] += 1
            if outcome == "conflicts":
                conflicts.append(
                    {"version_id": vid, "profile": prof.name, "file_sha256": r["file_sha256"]}
                )
            elif outcome != "unchanged":
                _save(s, r, vid, prof.id, sig)
    counts["conflict_list"] = conflicts
    return counts


def _check_widths_held(s, rows: list[dict], name: str) -> None:
    """A profile's directions in the bundle have the width of the ones this registry holds."""
    for digest, dim in sorted({(r["profile_hash"], r["dim"]) for r in rows}):
        held = s.execute(
            sa.select(Signature.dim)
            .join(SignerProfile, SignerProfile.id == Signature.profile_id)
            .where(SignerProfile.hash == digest)
            .limit(1)
        ).scalar()
        if held is not None and held != dim:
            raise BundleRefused(
                f"{name}: profile {digest[:12]}… has {dim}-value directions in the "
                f"bundle but {held}-value ones here; nothing was imported"
            )


def _outcome(sig: Signature | None, r: dict, replace: bool) -> str:
    """What the row does to the signature held for its (version, profile): the counter it bumps."""
    from registry.vectors import to_blob

    same = (
        sig is not None
        and sig.direction == to_blob(r["direction"])
        and sig.strength == r["strength"]
        and sig.consistency == r["consistency"]
    )
    if same:
        return "unchanged"
    if sig is not None and not replace:
        return "conflicts"
    return "replaced" if sig is not None else "added"


def _save(s, r: dict, version_id: int, profile_id: int, existing: Signature | None) -> None:
    from registry.signatures import save_signature

    save_signature(
        s,
        version_id=version_id,
        profile_id=profile_id,
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
        existing=existing,
    )
    s.flush()


def _place(s, r: dict, counts: dict, now) -> int:
    """The version the row's signature lands on (see ``import_bundle``), added if need be."""
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
        _add_civitai_version(s, r, now)
        return cid
    return _add_local_version(s, r, now)


def _add_civitai_version(s, r: dict, now) -> None:
    """The bundle's Civitai version (and its model, if new here), described by the bundle."""
    cid, mid = r["civitai_version_id"], r["civitai_model_id"]
    if mid is not None and s.get(Model, mid) is None:
        s.add(
            Model(id=mid, name=r["name"] or "", source="bundle", first_seen_at=now, updated_at=now)
        )
        s.flush()
    _add_version(s, r, now, version_id=cid, model_id=mid, source="bundle")


def _add_local_version(s, r: dict, now) -> int:
    """A local version holding the file's hash (no file yet), so a later ``scan`` finds it."""
    vid = next_local_version_id(s)
    _add_version(s, r, now, version_id=vid, model_id=None, source="local")
    s.add(
        File(
            version_id=vid,
            name=r["name"] or "",
            primary=True,
            sha256=r["file_sha256"],
            autov2=r["file_autov2"],
            state=FileState.SKIPPED,
            error="known from a signature bundle; no file here yet (scan a folder holding it)",
            updated_at=now,
        )
    )
    s.flush()
    return vid


def _add_version(s, r: dict, now, *, version_id: int, model_id: int | None, source: str) -> None:
    s.add(
        Version(
            id=version_id,
            model_id=model_id,
            name=r["name"] or "",
            base_model=r["base_model"],
            source=source,
            first_seen_at=now,
            updated_at=now,
        )
    )
    s.flush()
