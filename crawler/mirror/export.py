"""Registry → mirror: the crawled models, versions and verified files written as a mirror directory."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from crawler.mirror.catalog import MirrorError, _as_list, _json_bytes, _write_manifest
from registry.files import write_file
from registry.states import FileState


def export_mirror(db, store, out_dir: str | os.PathLike, *, batch: int = 500) -> dict[str, int]:
    """Write the registry's crawled (not gone) models, versions and verified files as a mirror.

    ``out_dir`` must be empty, absent, or an earlier mirror (it has ``mirror.json``); models no
    longer in the registry's live set are removed from it. File bytes are hard-linked from the
    artifact store when possible, else copied. Everything is written into a temporary sibling
    directory that replaces ``out_dir`` at the end: a failed export leaves ``out_dir`` as it was.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MirrorError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "mirror.json").is_file():
        raise MirrorError(
            f"{out} is not empty and not a mirror (no mirror.json); nothing was written"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    final, out = out, Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        counts = _export_into(db, store, out, batch)
        old = {p.name for p in (final / "models").glob("*.json")} if final.is_dir() else set()
        counts["models_removed"] = len(old - {p.name for p in (out / "models").glob("*.json")})
        _swap_in(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return counts


def _swap_in(new: Path, target: Path) -> None:
    """Put the finished directory ``new`` at ``target`` (absent, empty, or an earlier mirror)."""
    os.chmod(new, 0o755)  # mkdtemp makes it private
    if target.is_dir() and any(target.iterdir()):
        retired = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
        os.rename(target, retired)
        os.rename(new, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(new, target)  # over an empty directory too


def _export_into(db, store, out: Path, batch: int) -> dict[str, int]:
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "files").mkdir(parents=True, exist_ok=True)
    counts = {
        "models": 0,
        "versions": 0,
        "files": 0,
        "files_linked": 0,
        "files_copied": 0,
        "models_removed": 0,
    }
    with db.read() as s:
        ids = _live_model_ids(s)
        for i in range(0, len(ids), batch):
            chunk = ids[i : i + batch]
            models, versions, verified = _read_batch(s, chunk)
            for model_id in chunk:
                raws = versions.get(model_id, [])
                if raws:
                    _write_model(out, store, model_id, models[model_id], raws, verified, counts)
    _write_manifest(out, counts["models"], source="carlos-reg mirror export")
    return counts


def _live_model_ids(s) -> list[int]:
    """The ids of the crawled models that are not gone, in order."""
    import sqlalchemy as sa

    from registry.models import Model

    return list(
        s.execute(
            sa.select(Model.id)
            .where(Model.source == "civitai", Model.gone_at.is_(None), Model.raw.is_not(None))
            .order_by(Model.id)
        ).scalars()
    )


def _read_batch(s, chunk: list[int]) -> tuple[dict[int, dict], dict[int, list], dict[int, str]]:
    """For the models ``chunk``: their raw payloads, their live versions' raw payloads (by model,
    in id order), and the artifact paths of their verified files (by Civitai file id)."""
    import sqlalchemy as sa

    from registry.models import File, Model, Version

    models = {
        r.id: r.raw for r in s.execute(sa.select(Model.id, Model.raw).where(Model.id.in_(chunk)))
    }
    versions: dict[int, list] = {}
    for r in s.execute(
        sa.select(Version.id, Version.model_id, Version.raw)
        .where(Version.model_id.in_(chunk), Version.gone_at.is_(None), Version.raw.is_not(None))
        .order_by(Version.id)
    ):
        versions.setdefault(r.model_id, []).append(r.raw)
    verified = {
        r.civitai_file_id: r.local_path
        for r in s.execute(
            sa.select(File.civitai_file_id, File.local_path)
            .join(Version, Version.id == File.version_id)
            .where(
                Version.model_id.in_(chunk),
                File.state == FileState.VERIFIED,
                File.local_path.is_not(None),
                File.civitai_file_id.is_not(None),
            )
        )
    }
    return models, versions, verified


def _write_model(
    out: Path,
    store,
    model_id: int,
    model_raw: dict,
    raws: list,
    verified: dict[int, str],
    counts: dict[str, int],
) -> None:
    """Write one model's JSON (versions in Civitai's order) and place its verified files."""
    raws.sort(key=lambda v: v.get("index") if type(v.get("index")) is int else 1 << 30)
    item = {**model_raw, "modelVersions": raws}
    write_file(out / "models" / f"{model_id}.json", _json_bytes(item))
    counts["models"] += 1
    counts["versions"] += len(raws)
    for v in raws:
        for f in _as_list(v.get("files")):
            fid = f.get("id") if isinstance(f, dict) else None
            if fid in verified:
                counts["files"] += 1
                how = _place_file(store.path(verified[fid]), out / "files" / str(int(fid)))
                if how:
                    counts[f"files_{how}"] += 1


def _place_file(source: Path, target: Path) -> str | None:
    """Hard-link (or copy) a verified file into a mirror; None when it is already there."""
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return None
    tmp = target.with_name(f".tmp-{target.name}-{secrets.token_hex(4)}")
    try:
        os.link(source, tmp)
        how = "linked"
    except OSError:
        shutil.copyfile(source, tmp)
        how = "copied"
    os.replace(tmp, target)
    return how
