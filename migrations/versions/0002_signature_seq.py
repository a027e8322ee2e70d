"""signature write order: signature.seq and change_counter

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "change_counter",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_change_counter")),
    )
    with op.batch_alter_table("signature", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.create_index(batch_op.f("ix_signature_seq"), ["seq"], unique=False)
    # Existing signatures get distinct, increasing seq values in id order.
    op.execute("UPDATE signature SET seq = id")
    op.execute(
        sa.text(
            "INSERT INTO change_counter (name, value) "
            "SELECT 'signature', COALESCE(MAX(seq), 0) FROM signature"
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("signature", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signature_seq"))
        batch_op.drop_column("seq")
    op.drop_table("change_counter")
