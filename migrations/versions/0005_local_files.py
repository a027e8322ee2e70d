"""Your own LoRA folders: the scan's hash cache and links (local_file), Civitai by-hash answers (hash_lookup)

Revision ID: 0005_local_files
Revises: 0004_civitai
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_local_files"
down_revision = "0004_civitai"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "local_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("autov2", sa.String(length=16), nullable=True),
        sa.Column("previous_sha256", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("match", sa.String(length=16), nullable=False),
        sa.Column("signable", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hashed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("missing_since", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_local_file_version_id_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_local_file")),
        sa.UniqueConstraint("path", name=op.f("uq_local_file_path")),
    )
    op.create_index(op.f("ix_local_file_sha256"), "local_file", ["sha256"], unique=False)
    op.create_index(op.f("ix_local_file_version_id"), "local_file", ["version_id"], unique=False)
    op.create_table(
        "hash_lookup",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("looked_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_hash_lookup")),
    )


def downgrade() -> None:
    op.drop_table("hash_lookup")
    op.drop_index(op.f("ix_local_file_version_id"), table_name="local_file")
    op.drop_index(op.f("ix_local_file_sha256"), table_name="local_file")
    op.drop_table("local_file")
