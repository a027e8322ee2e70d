"""Images: kept before/after sample images, the author's preview images, and where a model was crawled from

Revision ID: 0006_images
Revises: 0005_local_files
Create Date: 2026-11-29

- ``sample_image``: the signer's kept before/after images (base branch once per profile, LoRA
  branch per version), as small WebP files in the artifact store.
- ``version.previews``: the version payload's ``images`` (URL, width, height, NSFW level, type),
  filled from the raw payloads already held (no network).
- ``model.origin``: host[:port] of the API a crawl read the model from (None for civitai.com and
  for what was imported), so a mirror's models never link to civitai.com.

Self-contained on purpose: what it derives must not change when the crawler does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_images"
down_revision = "0005_local_files"
branch_labels = None
depends_on = None

MAX_PREVIEWS = 20


def _int(value):
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**31
        else None
    )


def previews_of(raw) -> list[dict]:
    images = raw.get("images") if isinstance(raw, dict) else None
    out = []
    for item in images if isinstance(images, list) else []:
        url = item.get("url") if isinstance(item, dict) else None
        if (
            not isinstance(url, str)
            or not url.lower().startswith(("https://", "http://"))
            or len(url) > 2000
        ):
            continue
        kind = item.get("type")
        out.append(
            {
                "url": url,
                "width": _int(item.get("width")),
                "height": _int(item.get("height")),
                "nsfw_level": _int(item.get("nsfwLevel")),
                "type": kind if isinstance(kind, str) else "image",
            }
        )
        if len(out) == MAX_PREVIEWS:
            break
    return out


def upgrade() -> None:
    op.create_table(
        "sample_image",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), server_default="", nullable=False),
        sa.Column("artifact_path", sa.String(length=255), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["signer_profile.id"],
            name=op.f("fk_sample_image_profile_id_signer_profile"),
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_sample_image_version_id_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sample_image")),
    )
    op.create_index(
        op.f("ix_sample_image_profile_id"), "sample_image", ["profile_id"], unique=False
    )
    op.create_index(
        op.f("ix_sample_image_version_id"), "sample_image", ["version_id"], unique=False
    )
    with op.batch_alter_table("version") as batch:
        batch.add_column(sa.Column("previews", sa.JSON(), nullable=True))
    with op.batch_alter_table("model") as batch:
        batch.add_column(sa.Column("origin", sa.String(length=255), nullable=True))
    conn = op.get_bind()
    version = sa.table(
        "version",
        sa.column("id", sa.Integer()),
        sa.column("raw", sa.JSON()),
        sa.column("previews", sa.JSON()),
    )
    for vid, raw in conn.execute(
        sa.select(version.c.id, version.c.raw).where(version.c.raw.is_not(None))
    ).all():
        found = previews_of(raw)
        if found:
            conn.execute(sa.update(version).where(version.c.id == vid).values(previews=found))


def downgrade() -> None:
    with op.batch_alter_table("model") as batch:
        batch.drop_column("origin")
    with op.batch_alter_table("version") as batch:
        batch.drop_column("previews")
    op.drop_index(op.f("ix_sample_image_version_id"), table_name="sample_image")
    op.drop_index(op.f("ix_sample_image_profile_id"), table_name="sample_image")
    op.drop_table("sample_image")
