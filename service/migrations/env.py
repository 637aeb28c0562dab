"""Alembic's environment: migrates the database the service settings name (DATABASE_URL, or the embedded SQLite
in DATA_DIR), under the migration lock. `onnx-compress migrate` hands in its own locked connection; the `alembic`
command (run from the repository root, with alembic.ini) opens one here."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from service.db import get_engine
from service.orm import Base
from service.schema import migration_lock, render_item
from service.settings import get_settings

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_item=render_item,
        render_as_batch=True,  # SQLite alters tables by copying them; batch operations do that
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():  # `alembic upgrade --sql`: print the SQL
    context.configure(
        url=get_settings().resolved_database_url,
        target_metadata=Base.metadata,
        render_item=render_item,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    run_migrations(given)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    with get_engine(get_settings()).connect() as connection, migration_lock(connection):
        run_migrations(connection)
        connection.commit()
