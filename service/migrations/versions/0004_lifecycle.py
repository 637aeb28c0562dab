"""Lifecycle: a job's `model_id` is a plain reference (no foreign key), so an uploaded model can be deleted while
finished jobs keep naming it (like their datasets); models and datasets get a (created_at, id) index for their
cursor-paginated lists.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite reflects the baseline's unnamed FOREIGN KEY(model_id) without a name: batch mode names it by this
SQLITE_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _model_foreign_key() -> str | None:
    """The name of jobs' FOREIGN KEY(model_id) -> models (PostgreSQL named it itself), None if it is gone."""
    for key in sa.inspect(op.get_bind()).get_foreign_keys("jobs"):
        if key["referred_table"] == "models" and key["constrained_columns"] == ["model_id"]:
            return key["name"] or "fk_jobs_model_id_models"
    return None


def upgrade() -> None:
    name = _model_foreign_key()
    if name is not None:
        with op.batch_alter_table("jobs", naming_convention=SQLITE_NAMES) as batch_op:
            batch_op.drop_constraint(name, type_="foreignkey")
    op.create_index("ix_models_created", "models", ["created_at", "id"], unique=False)
    op.create_index("ix_datasets_created", "datasets", ["created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_datasets_created", table_name="datasets")
    op.drop_index("ix_models_created", table_name="models")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.create_foreign_key("fk_jobs_model_id_models", "models", ["model_id"], ["id"])
