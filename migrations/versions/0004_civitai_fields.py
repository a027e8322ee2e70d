"""Civitai as it is: verbatim trigger words, early access, dates, status, usage control, more hashes

Revision ID: 0004_civitai
Revises: 0003
Create Date: 2026-11-29

New columns are filled from the raw payloads the registry already holds (no network):

- ``version.trained_words``: the payload's ``trainedWords`` entries verbatim, in order (only
  non-string entries dropped); earlier revisions split entries on commas and de-duplicated them.
- ``version.published_at`` falls back to ``createdAt`` (2023-shaped payloads have no ``publishedAt``);
  ``civitai_created_at``/``civitai_updated_at``, ``status``, ``usage_control`` and
  ``early_access_ends_at`` come from the version payload; ``air`` is rebuilt from the version's
  base-model ecosystem unless the payload carries its own.
- ``file.autov1``/``autov3``/``size_type``/scan messages/``scanned_at`` from each version's files.
- Files of versions that are in early access now are ``deferred`` with their attempts cleared (the
  403s they got were early access, not failures); failures recorded as early-access 403s get their
  attempts back; files of Archived/TakenDown models are ``unavailable``.

This file is self-contained on purpose: what it derives must not change when the crawler does.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

revision = "0004_civitai"
down_revision = "0003"
branch_labels = None
depends_on = None

_BATCH = 500
_ECOSYSTEM = {
    "sdxl 1.0": "sdxl",
    "sdxl 0.9": "sdxl",
    "sdxl 1.0 lcm": "sdxl",
    "sdxl turbo": "sdxl",
    "sdxl lightning": "sdxl",
    "sdxl hyper": "sdxl",
    "pony": "sdxl",
    "illustrious": "sdxl",
    "noobai": "sdxl",
}  # Civitai's root ecosystem (crawler.parse.AIR_ECOSYSTEM)
_AIR_TYPE = {"LORA": "lora", "LoCon": "lycoris", "DoRA": "dora"}


def upgrade() -> None:
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("usage_control", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("early_access_ends_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("civitai_created_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("civitai_updated_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.add_column(sa.Column("autov1", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("autov3", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("size_type", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("pickle_scan_message", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("virus_scan_message", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("scanned_at", sa.DateTime(timezone=True), nullable=True))
    _fill(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("file", schema=None) as batch_op:
        for name in (
            "scanned_at",
            "virus_scan_message",
            "pickle_scan_message",
            "size_type",
            "autov3",
            "autov1",
        ):
            batch_op.drop_column(name)
    with op.batch_alter_table("version", schema=None) as batch_op:
        for name in (
            "civitai_updated_at",
            "civitai_created_at",
            "early_access_ends_at",
            "usage_control",
            "status",
        ):
            batch_op.drop_column(name)
    # trained_words stay verbatim: a list of strings, which earlier revisions read as they are


# ---------------------------------------------------------------- filling from raw payloads

_model = sa.table(
    "model", sa.column("id", sa.Integer), sa.column("type", sa.String), sa.column("mode", sa.String)
)
_version = sa.table(
    "version",
    sa.column("id", sa.Integer),
    sa.column("model_id", sa.Integer),
    sa.column("raw", sa.JSON),
    sa.column("base_model", sa.String),
    sa.column("availability", sa.String),
    sa.column("trained_words", sa.JSON),
    sa.column("published_at", sa.DateTime(timezone=True)),
    sa.column("air", sa.String),
    sa.column("status", sa.String),
    sa.column("usage_control", sa.String),
    sa.column("early_access_ends_at", sa.DateTime(timezone=True)),
    sa.column("civitai_created_at", sa.DateTime(timezone=True)),
    sa.column("civitai_updated_at", sa.DateTime(timezone=True)),
)
_file = sa.table(
    "file",
    sa.column("id", sa.Integer),
    sa.column("civitai_file_id", sa.Integer),
    sa.column("version_id", sa.Integer),
    sa.column("state", sa.String),
    sa.column("error", sa.Text),
    sa.column("attempts", sa.Integer),
    sa.column("autov1", sa.String),
    sa.column("autov3", sa.String),
    sa.column("size_type", sa.String),
    sa.column("pickle_scan_message", sa.Text),
    sa.column("virus_scan_message", sa.Text),
    sa.column("scanned_at", sa.DateTime(timezone=True)),
)


def _text(value, limit: int | None = None):
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value[:limit] if limit else value


def _when(value):
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None


def _early_access_end(raw: dict):
    for key in ("earlyAccessEndsAt", "earlyAccessDeadline"):
        if (when := _when(raw.get(key))) is not None:
            return when
    paid = raw.get("paidAccess") if isinstance(raw.get("paidAccess"), dict) else {}
    if (when := _when(paid.get("endsAt"))) is not None:
        return when
    days = raw.get("earlyAccessTimeFrame")
    start = _when(raw.get("publishedAt")) or _when(raw.get("createdAt"))
    if type(days) is int and 0 < days < 10000 and start is not None:
        return start + timedelta(days=days)
    return None


def _words(value) -> list:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [w for w in (_text(x) for x in value) if w is not None]


def _air(base_model, model_type, model_id, version_id):
    if model_type not in _AIR_TYPE or model_id is None:
        return None
    key = " ".join((base_model or "").split()).casefold()
    ecosystem = _ECOSYSTEM.get(key) or re.sub(r"[^a-z0-9]+", "", key) or "other"
    return f"urn:air:{ecosystem}:{_AIR_TYPE[model_type]}:civitai:{model_id}@{version_id}"


def _update_many(conn, table, key_column, key: str, rows: list[dict]) -> None:
    if not rows:
        return
    names = [k for k in rows[0] if k != key]
    stmt = (
        sa.update(table)
        .where(key_column == sa.bindparam(key))
        .values({table.c[n]: sa.bindparam(f"p_{n}", type_=table.c[n].type) for n in names})
    )
    conn.execute(stmt, [{key: r[key], **{f"p_{n}": r[n] for n in names}} for r in rows])


def _fill(conn) -> None:
    sqlite = conn.dialect.name == "sqlite"
    now = datetime.now(timezone.utc)

    def ts(value):  # SQLite's DateTime ignores the zone: store naive UTC, as registry.models does
        return value.replace(tzinfo=None) if (sqlite and value is not None) else value

    models = {
        r.id: (r.type, r.mode)
        for r in conn.execute(sa.select(_model.c.id, _model.c.type, _model.c.mode))
    }
    ids = [
        r[0]
        for r in conn.execute(
            sa.select(_version.c.id).where(_version.c.raw.is_not(None)).order_by(_version.c.id)
        )
    ]
    for i in range(0, len(ids), _BATCH):
        rows = conn.execute(
            sa.select(
                _version.c.id,
                _version.c.model_id,
                _version.c.raw,
                _version.c.base_model,
                _version.c.availability,
                _version.c.published_at,
                _version.c.air,
            ).where(_version.c.id.in_(ids[i : i + _BATCH]))
        ).all()
        v_updates, f_updates, deferred, unavailable = [], [], [], []
        for r in rows:
            raw = r.raw if isinstance(r.raw, dict) else {}
            mtype, mode = models.get(r.model_id, (None, None))
            created = _when(raw.get("createdAt"))
            ends = _early_access_end(raw)
            v_updates.append(
                dict(
                    b_id=r.id,
                    trained_words=_words(raw.get("trainedWords")),
                    published_at=ts(r.published_at or _when(raw.get("publishedAt")) or created),
                    air=_text(raw.get("air"), 255)
                    or _air(r.base_model, mtype, r.model_id, r.id)
                    or r.air,
                    status=_text(raw.get("status"), 32),
                    usage_control=_text(raw.get("usageControl"), 32),
                    early_access_ends_at=ts(ends),
                    civitai_created_at=ts(created),
                    civitai_updated_at=ts(_when(raw.get("updatedAt"))),
                )
            )
            for f in raw.get("files") if isinstance(raw.get("files"), list) else []:
                if not isinstance(f, dict) or type(f.get("id")) is not int:
                    continue
                hashes = (
                    {str(k).lower(): v for k, v in (f.get("hashes") or {}).items()}
                    if isinstance(f.get("hashes"), dict)
                    else {}
                )
                meta = f.get("metadata") if isinstance(f.get("metadata"), dict) else {}
                f_updates.append(
                    dict(
                        b_cid=f["id"],
                        autov1=_text(hashes.get("autov1"), 64),
                        autov3=_text(hashes.get("autov3"), 64),
                        size_type=_text(meta.get("size"), 64),
                        pickle_scan_message=_text(f.get("pickleScanMessage"), 4000),
                        virus_scan_message=_text(f.get("virusScanMessage"), 4000),
                        scanned_at=ts(_when(f.get("scannedAt"))),
                    )
                )
            if mode in ("Archived", "TakenDown"):
                unavailable.append((r.id, mode))
            elif r.availability == "EarlyAccess" or (ends is not None and ends > now):
                deferred.append((r.id, ends))
        _update_many(conn, _version, _version.c.id, "b_id", v_updates)
        _update_many(conn, _file, _file.c.civitai_file_id, "b_cid", f_updates)
        for vid, ends in deferred:
            until = f" until {ends.isoformat()}" if ends is not None else ""
            conn.execute(
                sa.update(_file)
                .where(_file.c.version_id == vid, _file.c.state.in_(("pending", "failed")))
                .values(
                    state="deferred",
                    attempts=0,
                    error=f"early access{until}: not downloaded until it is public",
                )
            )
        for vid, mode in unavailable:
            conn.execute(
                sa.update(_file)
                .where(_file.c.version_id == vid, _file.c.state.in_(("pending", "failed")))
                .values(
                    state="unavailable", error=f"the model is {mode} on Civitai: never downloaded"
                )
            )
    # 403s counted against early access before this revision: those files get their attempts back
    conn.execute(
        sa.update(_file)
        .where(_file.c.state == "failed", sa.func.lower(_file.c.error).like("%early access%"))
        .values(state="pending", attempts=0)
    )
