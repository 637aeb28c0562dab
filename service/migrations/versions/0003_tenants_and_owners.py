"""Tenants and their API keys (stored hashed); every model, dataset and job gets an owner (existing rows: the
default tenant); idempotency keys become unique per tenant.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite reflects the baseline's unnamed UNIQUE(idempotency_key) without a name: batch mode names it by this
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _global_idempotency_unique() -> str | None:
    """The name of the baseline's UNIQUE(idempotency_key) (PostgreSQL named it itself), None if it is gone."""
    for constraint in sa.inspect(op.get_bind()).get_unique_constraints("jobs"):
        if constraint["column_names"] == ["idempotency_key"]:
            return constraint["name"] or "uq_jobs_idempotency_key"
    return None


def _owner_column() -> sa.Column:
    return sa.Column("owner_id", sa.String(length=32), server_default="default", nullable=False)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("datasets") as batch_op:
        batch_op.add_column(_owner_column())
        batch_op.create_index(batch_op.f("ix_datasets_owner_id"), ["owner_id"], unique=False)

    old_unique = _global_idempotency_unique()
    with op.batch_alter_table("jobs", naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.add_column(_owner_column())
        batch_op.create_index(batch_op.f("ix_jobs_owner_id"), ["owner_id"], unique=False)
        if old_unique is not None:
            batch_op.drop_constraint(old_unique, type_="unique")
        batch_op.create_unique_constraint("uq_jobs_owner_idempotency_key", ["owner_id", "idempotency_key"])

    with op.batch_alter_table("models") as batch_op:
        batch_op.add_column(_owner_column())
        batch_op.create_index(batch_op.f("ix_models_owner_id"), ["owner_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("models") as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_owner_id"))
        batch_op.drop_column("owner_id")

    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint("uq_jobs_owner_idempotency_key", type_="unique")
        batch_op.drop_index(batch_op.f("ix_jobs_owner_id"))
        batch_op.drop_column("owner_id")
        batch_op.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])

    with op.batch_alter_table("datasets") as batch_op:
        batch_op.drop_index(batch_op.f("ix_datasets_owner_id"))
        batch_op.drop_column("owner_id")

    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_tenant_id"))

    op.drop_table("api_keys")
    op.drop_table("tenants")
