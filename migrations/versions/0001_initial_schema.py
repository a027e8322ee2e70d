"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crawl_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("cursor", sa.String(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("models_seen", sa.Integer(), nullable=False),
        sa.Column("models_written", sa.Integer(), nullable=False),
        sa.Column("versions_new", sa.Integer(), nullable=False),
        sa.Column("versions_gone", sa.Integer(), nullable=False),
        sa.Column("files_verified", sa.Integer(), nullable=False),
        sa.Column("files_failed", sa.Integer(), nullable=False),
        sa.Column("bytes_downloaded", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crawl_run")),
    )
    op.create_table(
        "creator",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("image_url", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_creator")),
        sa.UniqueConstraint("username", name=op.f("uq_creator_username")),
    )
    op.create_table(
        "signer_profile",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signer_profile")),
        sa.UniqueConstraint("hash", name=op.f("uq_signer_profile_hash")),
    )
    with op.batch_alter_table("signer_profile", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signer_profile_name"), ["name"], unique=False)

    op.create_table(
        "tag",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tag")),
        sa.UniqueConstraint("name", name=op.f("uq_tag_name")),
    )
    op.create_table(
        "vector_cache",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("namespace", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vector_cache")),
        sa.UniqueConstraint("namespace", "key", name=op.f("uq_vector_cache_namespace_key")),
    )
    op.create_table(
        "crawl_error",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["crawl_run.id"],
            name=op.f("fk_crawl_error_run_id_crawl_run"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crawl_error")),
    )
    with op.batch_alter_table("crawl_error", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_crawl_error_run_id"), ["run_id"], unique=False)

    op.create_table(
        "model",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=True),
        sa.Column("nsfw", sa.Boolean(), nullable=False),
        sa.Column("nsfw_level", sa.Integer(), nullable=True),
        sa.Column("poi", sa.Boolean(), nullable=False),
        sa.Column("minor", sa.Boolean(), nullable=False),
        sa.Column("availability", sa.String(), nullable=True),
        sa.Column("mode", sa.String(), nullable=True),
        sa.Column("allow_no_credit", sa.Boolean(), nullable=True),
        sa.Column("allow_derivatives", sa.Boolean(), nullable=True),
        sa.Column("allow_different_license", sa.Boolean(), nullable=True),
        sa.Column("allow_commercial_use", sa.JSON(), nullable=True),
        sa.Column("download_count", sa.Integer(), nullable=True),
        sa.Column("thumbs_up_count", sa.Integer(), nullable=True),
        sa.Column("creator_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=True),
        sa.Column("raw_hash", sa.String(length=64), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gone_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["creator_id"], ["creator.id"], name=op.f("fk_model_creator_id_creator")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
    )
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_creator_id"), ["creator_id"], unique=False)

    op.create_table(
        "model_tag",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_model_tag_model_id_model"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["tag.id"], name=op.f("fk_model_tag_tag_id_tag"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", "tag_id", name=op.f("pk_model_tag")),
    )
    with op.batch_alter_table("model_tag", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_tag_tag_id"), ["tag_id"], unique=False)

    op.create_table(
        "version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("base_model", sa.String(length=64), nullable=True),
        sa.Column("base_model_type", sa.String(), nullable=True),
        sa.Column("trained_words", sa.JSON(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("availability", sa.String(), nullable=True),
        sa.Column("nsfw_level", sa.Integer(), nullable=True),
        sa.Column("download_count", sa.Integer(), nullable=True),
        sa.Column("download_url", sa.String(), nullable=True),
        sa.Column("air", sa.String(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=True),
        sa.Column("raw_hash", sa.String(length=64), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gone_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], name=op.f("fk_version_model_id_model")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version")),
    )
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_version_base_model"), ["base_model"], unique=False)
        batch_op.create_index(batch_op.f("ix_version_model_id"), ["model_id"], unique=False)

    op.create_table(
        "file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("civitai_file_id", sa.Integer(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(), nullable=True),
        sa.Column("format", sa.String(), nullable=True),
        sa.Column("fp", sa.String(), nullable=True),
        sa.Column("primary", sa.Boolean(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("autov2", sa.String(), nullable=True),
        sa.Column("blake3", sa.String(), nullable=True),
        sa.Column("crc32", sa.String(), nullable=True),
        sa.Column("pickle_scan", sa.String(), nullable=True),
        sa.Column("virus_scan", sa.String(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("local_path", sa.String(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_file_version_id_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file")),
        sa.UniqueConstraint("civitai_file_id", name=op.f("uq_file_civitai_file_id")),
    )
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_file_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_file_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_file_version_id"), ["version_id"], unique=False)

    op.create_table(
        "sign_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["signer_profile.id"],
            name=op.f("fk_sign_job_profile_id_signer_profile"),
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_sign_job_version_id_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_job")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_sign_job_dedupe_key")),
    )
    with op.batch_alter_table("sign_job", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sign_job_claim", ["state", "priority", "available_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_sign_job_profile_id"), ["profile_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sign_job_version_id"), ["version_id"], unique=False)

    op.create_table(
        "base_cache",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("artifact_path", sa.String(), nullable=False),
        sa.Column("mean_feature", sa.LargeBinary(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["sign_job.id"], name=op.f("fk_base_cache_job_id_sign_job")
        ),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["signer_profile.id"],
            name=op.f("fk_base_cache_profile_id_signer_profile"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_cache")),
        sa.UniqueConstraint("profile_id", name=op.f("uq_base_cache_profile_id")),
    )
    op.create_table(
        "signature",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("direction", sa.LargeBinary(), nullable=False),
        sa.Column("strength", sa.Float(), nullable=False),
        sa.Column("consistency", sa.Float(), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("estimates", sa.JSON(), nullable=True),
        sa.Column("file_sha256", sa.String(length=64), nullable=True),
        sa.Column("ensemble_path", sa.String(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["sign_job.id"], name=op.f("fk_signature_job_id_sign_job")
        ),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["signer_profile.id"],
            name=op.f("fk_signature_profile_id_signer_profile"),
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_signature_version_id_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signature")),
        sa.UniqueConstraint(
            "version_id", "profile_id", name=op.f("uq_signature_version_id_profile_id")
        ),
    )
    with op.batch_alter_table("signature", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signature_profile_id"), ["profile_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_signature_version_id"), ["version_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("signature", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signature_version_id"))
        batch_op.drop_index(batch_op.f("ix_signature_profile_id"))

    op.drop_table("signature")
    op.drop_table("base_cache")
    with op.batch_alter_table("sign_job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sign_job_version_id"))
        batch_op.drop_index(batch_op.f("ix_sign_job_profile_id"))
        batch_op.drop_index("ix_sign_job_claim")

    op.drop_table("sign_job")
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_file_version_id"))
        batch_op.drop_index(batch_op.f("ix_file_state"))
        batch_op.drop_index(batch_op.f("ix_file_sha256"))

    op.drop_table("file")
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_version_model_id"))
        batch_op.drop_index(batch_op.f("ix_version_base_model"))

    op.drop_table("version")
    with op.batch_alter_table("model_tag", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_tag_tag_id"))

    op.drop_table("model_tag")
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_creator_id"))

    op.drop_table("model")
    with op.batch_alter_table("crawl_error", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_crawl_error_run_id"))

    op.drop_table("crawl_error")
    op.drop_table("vector_cache")
    op.drop_table("tag")
    with op.batch_alter_table("signer_profile", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signer_profile_name"))

    op.drop_table("signer_profile")
    op.drop_table("creator")
    op.drop_table("crawl_run")
