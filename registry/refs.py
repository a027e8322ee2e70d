"""REF → version id: a version id (negative for local files), ``local:N`` (= version -N),
``civitai:MODEL@VERSION``, an AIR URN, a Civitai model/version/download URL (what every table prints),
a file hash (SHA-256, AutoV1, AutoV2 or AutoV3), or an unambiguous name."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from registry.errors import NotFound

if TYPE_CHECKING:  # SQLAlchemy loads when a REF is resolved, not when commands are defined
    from sqlmodel import Session

_CIVITAI = re.compile(r"^civitai:(\d+)(?:@(\d+))?$", re.I)
_AIR = re.compile(r"^urn:air:[a-z0-9_.-]+:[a-z0-9_.-]+:civitai:(\d+)(?:@(\d+))?$", re.I)
_INT = re.compile(r"^-?\d+$")
_LOCAL = re.compile(r"^local:(\d+)$", re.I)  # local files signed by path have version id -N
_HEX = re.compile(r"^[0-9a-f]+$", re.I)
# hash kind by length: SHA-256 (64), AutoV3 (12), AutoV2 (10), AutoV1 (8) hex digits
_HASH_COLUMNS = {64: "sha256", 12: "autov3", 10: "autov2", 8: "autov1"}
_URL_PATHS = [  # (pattern on the URL path, what its number is)
    (re.compile(r"^/models/(\d+)(?:/[^/]*)?/?$"), "model"),
    (re.compile(r"^/api/v1/models/(\d+)/?$"), "model"),
    (re.compile(r"^/api/v1/model-versions/(\d+)/?$"), "version"),
    (re.compile(r"^/model-versions/(\d+)/?$"), "version"),
    (re.compile(r"^/api/download/models/(\d+)/?$"), "version"),
]

MAX_ID = (
    2**31 - 1
)  # ids are SQL INTEGER: a larger number names nothing (and must not reach the database)

REF_HELP = (
    "a version id, civitai:MODEL@VERSION, urn:air:sdxl:lora:civitai:MODEL@VERSION, a Civitai URL "
    "(civitai.com/models/M?modelVersionId=V), a file's SHA-256 or AutoV2 hash, local:N (a file signed "
    "from disk), or an unambiguous name"
)

# For commands that take REFs: a negative version id such as -3 is a REF, not an unknown option.
REF_COMMAND = {"ignore_unknown_options": True}


class AmbiguousRef(NotFound):
    pass


def _id(text: str) -> int | None:
    """The integer ``text`` spells, or None when no id can be that large (or that long)."""
    digits = text.lstrip("-")
    if len(digits) > 12:
        return None
    value = int(text)
    return value if abs(value) <= MAX_ID else None


def resolve_ref(session: Session, ref: str) -> int:
    """Return the version id a REF names, or raise NotFound / AmbiguousRef with the candidates."""
    import sqlalchemy as sa

    from registry.models import Version

    ref = ref.strip()
    if not ref:
        raise NotFound("empty REF: give " + REF_HELP)
    local = _LOCAL.match(ref)
    if _INT.match(ref) or local:
        vid = _id("-" + local.group(1)) if local else _id(ref)
        if vid is None or session.get(Version, vid) is None:
            raise NotFound(
                f"no LoRA version {vid if vid is not None else ref[:40]} in the registry"
            )
        return vid
    m = _CIVITAI.match(ref) or _AIR.match(ref)
    parsed = (m.group(1), m.group(2)) if m else _parse_url(ref)
    if parsed is not None:
        model_id, version_id = (_id(parsed[0]) if parsed[0] is not None else None), parsed[1]
        if (parsed[0] is not None and model_id is None) or (
            version_id is not None and _id(version_id) is None
        ):
            raise NotFound(f"no such LoRA in the registry ({ref[:60]})")
        if model_id is None:
            if session.get(Version, int(version_id)) is None:
                raise NotFound(f"no LoRA version {version_id} in the registry ({ref[:100]})")
            return int(version_id)
        if version_id is not None:
            version = session.get(Version, int(version_id))
            if version is None:
                raise NotFound(f"no LoRA version {version_id} in the registry ({ref})")
            if version.model_id is not None and version.model_id != model_id:
                raise NotFound(
                    f"version {version_id} belongs to model {version.model_id}, not {model_id} ({ref})"
                )
            return version.id
        ids = (
            session.exec(
                sa.select(Version.id).where(Version.model_id == model_id).order_by(Version.id)
            )
            .scalars()
            .all()
        )
        if not ids:
            raise NotFound(f"no versions of Civitai model {model_id} in the registry")
        if len(ids) > 1:
            raise AmbiguousRef(
                f"model {model_id} has {len(ids)} versions; name one: "
                + ", ".join(f"civitai:{model_id}@{v}" for v in ids[:10])
            )
        return ids[0]
    if _HEX.match(ref) and len(ref) in _HASH_COLUMNS:
        found = _resolve_hash(session, ref)
        if found is not None:
            return found
    return _resolve_name(session, ref)


def _parse_url(ref: str) -> tuple[str | None, str | None] | None:
    """(model id or None, version id or None) of a Civitai web, API or download URL; None if not one."""
    if not re.match(r"^(https?://)?([a-z0-9-]+\.)*[a-z0-9-]+(:\d+)?/", ref, re.I):
        return None
    parts = urlsplit(ref if "://" in ref else "https://" + ref)
    for pattern, kind in _URL_PATHS:
        m = pattern.match(parts.path)
        if m:
            number = m.group(1)
            if kind == "version":
                return None, number
            version = (parse_qs(parts.query).get("modelVersionId") or [None])[0]
            return number, version if version and version.isdigit() else None
    return None


def _resolve_hash(session: Session, ref: str) -> int | None:
    """The version whose file has this hash (several versions sharing one file: ambiguous)."""
    import sqlalchemy as sa

    from registry.models import File

    column = getattr(File, _HASH_COLUMNS[len(ref)])
    rows = (
        session.exec(
            sa.select(File.version_id)
            .where(sa.func.lower(column) == ref.lower())
            .group_by(File.version_id)
            .order_by(File.version_id)
            .limit(11)
        )
        .scalars()
        .all()
    )
    if len(rows) > 1:
        raise AmbiguousRef(
            f"{len(rows) if len(rows) <= 10 else 'more than 10'} versions have a file with "
            f"{_HASH_COLUMNS[len(ref)]} {ref}: " + ", ".join(map(str, rows[:10]))
        )
    return rows[0] if rows else None


def _resolve_name(session: Session, ref: str) -> int:
    import sqlalchemy as sa

    from registry.models import Model, Version

    low = ref.lower()
    label = sa.func.lower(sa.func.coalesce(sa.func.nullif(Model.name, ""), Version.name))
    base = sa.select(Version.id, Model.name, Version.name).outerjoin(
        Model, Model.id == Version.model_id
    )
    exact = sa.or_(label == low, sa.func.lower(Version.name) == low)
    rows = session.exec(base.where(exact).order_by(Version.id).limit(11)).all()
    if not rows:
        pattern = "%" + low.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        like = sa.or_(
            label.like(pattern, escape="\\"), sa.func.lower(Version.name).like(pattern, escape="\\")
        )
        rows = session.exec(base.where(like).order_by(Version.id).limit(11)).all()
    if not rows:
        raise NotFound(f"no LoRA matches {ref!r}; give " + REF_HELP)
    if len(rows) > 1:
        shown = "; ".join(f"{vid} ({_label(mname, vname)})" for vid, mname, vname in rows[:10])
        more = " …" if len(rows) > 10 else ""
        raise AmbiguousRef(f"{ref!r} matches several LoRAs; use a version id: {shown}{more}")
    return rows[0][0]


def _label(model_name: str | None, version_name: str | None) -> str:
    if model_name and version_name and model_name != version_name:
        return f"{model_name} / {version_name}"
    return model_name or version_name or "unnamed"
