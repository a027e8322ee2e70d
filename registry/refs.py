"""REF → version id: a version id, ``civitai:MODEL@VERSION``, an AIR URN, ``local:N`` (= version -N),
or an unambiguous name."""
from __future__ import annotations

import re

import sqlalchemy as sa
from sqlmodel import Session

from registry.errors import NotFound
from registry.models import Model, Version

_CIVITAI = re.compile(r"^civitai:(\d+)(?:@(\d+))?$", re.I)
_AIR = re.compile(r"^urn:air:[a-z0-9_.-]+:[a-z0-9_.-]+:civitai:(\d+)(?:@(\d+))?$", re.I)
_INT = re.compile(r"^-?\d+$")
_LOCAL = re.compile(r"^local:(\d+)$", re.I)  # local files signed by path have version id -N

MAX_ID = 2**31 - 1  # ids are SQL INTEGER: a larger number names nothing (and must not reach the database)

REF_HELP = ("a version id, civitai:MODEL@VERSION, urn:air:sdxl:lora:civitai:MODEL@VERSION, "
            "local:N (a file signed from disk), or an unambiguous name")


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
    ref = ref.strip()
    if not ref:
        raise NotFound("empty REF: give " + REF_HELP)
    local = _LOCAL.match(ref)
    if _INT.match(ref) or local:
        vid = _id("-" + local.group(1)) if local else _id(ref)
        if vid is None or session.get(Version, vid) is None:
            raise NotFound(f"no LoRA version {vid if vid is not None else ref[:40]} in the registry")
        return vid
    m = _CIVITAI.match(ref) or _AIR.match(ref)
    if m:
        model_id, version_id = _id(m.group(1)), m.group(2)
        if model_id is None or (version_id is not None and _id(version_id) is None):
            raise NotFound(f"no such LoRA in the registry ({ref[:60]})")
        if version_id is not None:
            version = session.get(Version, int(version_id))
            if version is None:
                raise NotFound(f"no LoRA version {version_id} in the registry ({ref})")
            if version.model_id is not None and version.model_id != model_id:
                raise NotFound(f"version {version_id} belongs to model {version.model_id}, not {model_id} ({ref})")
            return version.id
        ids = session.exec(sa.select(Version.id).where(Version.model_id == model_id).order_by(Version.id)).scalars().all()
        if not ids:
            raise NotFound(f"no versions of Civitai model {model_id} in the registry")
        if len(ids) > 1:
            raise AmbiguousRef(f"model {model_id} has {len(ids)} versions; name one: "
                               + ", ".join(f"civitai:{model_id}@{v}" for v in ids[:10]))
        return ids[0]
    return _resolve_name(session, ref)


def _resolve_name(session: Session, ref: str) -> int:
    low = ref.lower()
    label = sa.func.lower(sa.func.coalesce(sa.func.nullif(Model.name, ""), Version.name))
    base = sa.select(Version.id, Model.name, Version.name).outerjoin(Model, Model.id == Version.model_id)
    exact = sa.or_(label == low, sa.func.lower(Version.name) == low)
    rows = session.exec(base.where(exact).order_by(Version.id).limit(11)).all()
    if not rows:
        pattern = "%" + low.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        like = sa.or_(label.like(pattern, escape="\\"), sa.func.lower(Version.name).like(pattern, escape="\\"))
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
