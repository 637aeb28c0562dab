"""The job store's schema: Alembic migrations (service/migrations) applied under a lock, and a start-up check.

`onnx-compress migrate` applies them; any number may run at once (a PostgreSQL advisory lock, or a file lock next
to a SQLite database, lets one at a time in; the others then find nothing to do). The API and the workers never
create tables: on a DATABASE_URL they refuse to start until the schema is current; the embedded database (SQLite
in DATA_DIR, no DATABASE_URL) is migrated by whichever process opens it first.
A database whose tables were made by `create_all` before migrations existed is adopted (stamped at the baseline).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from service.db import get_engine
from service.orm import EnumText, UTCDateTime
from service.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE_REVISION = "0001"  # the tables `create_all` made before migrations existed
ADVISORY_LOCK_KEY = 0x6F6E6E78_636D7072  # "onnxcmpr": one migration at a time per PostgreSQL database
MIGRATE_LOCK_TIMEOUT_S = 600.0
LOCK_POLL_S = 0.25


class SchemaNotCurrentError(RuntimeError):
    """The database's schema is not the one this version of the code expects."""


class MigrationLockTimeoutError(RuntimeError):
    """Another migration held the lock for too long."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration without alembic.ini (installed packages have none); `connection`, when given,
    is the one migrations run on (env.py uses it instead of opening its own)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revisions() -> set[str]:
    return set(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())


def current_revisions(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())


@contextmanager
def migration_lock(connection: Connection, timeout_s: float = MIGRATE_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the migration lock: a PostgreSQL session advisory lock, or a file lock next to a SQLite database."""
    deadline = time.monotonic() + timeout_s
    if connection.dialect.name == "postgresql":
        while not connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}):
            connection.rollback()
            _wait_or_give_up(deadline, timeout_s)
        connection.commit()  # a session lock: it outlives transactions; migrations manage their own
        try:
            yield
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()
        return
    database = connection.engine.url.database if connection.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield  # nothing shared to race on (or a backend without a lock: run one migration at a time)
        return
    lock_path = Path(f"{database}.migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                _wait_or_give_up(deadline, timeout_s)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _wait_or_give_up(deadline: float, timeout_s: float) -> None:
    if time.monotonic() > deadline:
        raise MigrationLockTimeoutError(
            f"another `onnx-compress migrate` held the migration lock for over {timeout_s:.0f} s; "
            "check that it is not stuck, then run it again"
        )
    time.sleep(LOCK_POLL_S)


def _made_before_migrations(connection: Connection) -> bool:
    tables = set(inspect(connection).get_table_names())
    return "jobs" in tables and "alembic_version" not in tables


def migrate(settings: Settings, lock_timeout_s: float = MIGRATE_LOCK_TIMEOUT_S) -> set[str]:
    """Bring the database to the newest schema (idempotent; safe to run concurrently); returns its revisions."""
    with get_engine(settings).connect() as connection, migration_lock(connection, lock_timeout_s):
        config = alembic_config(connection)
        if _made_before_migrations(connection):
            command.stamp(config, BASELINE_REVISION)
            connection.commit()
        command.upgrade(config, "head")
        connection.commit()
        return current_revisions(connection)


def require_current_schema(settings: Settings) -> None:
    """Raise SchemaNotCurrentError, saying what to run, unless the database is at the newest migration."""
    with get_engine(settings).connect() as connection:
        current = current_revisions(connection)
    heads = head_revisions()
    if current == heads:
        return
    known = {revision.revision for revision in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    if current - known:
        raise SchemaNotCurrentError(
            f"the database schema is at revision {', '.join(sorted(current))}, newer than this version of "
            f"onnx-compress knows (its newest is {', '.join(sorted(heads))}): run the newer version"
        )
    at = f"revision {', '.join(sorted(current))}" if current else "no revision (no tables yet)"
    raise SchemaNotCurrentError(
        f"the database schema is at {at}, this version needs {', '.join(sorted(heads))}: "
        "run `onnx-compress migrate` (with the same DATABASE_URL) before starting the api and workers"
    )


def prepare_schema(settings: Settings) -> None:
    """At start-up: the embedded database (no DATABASE_URL) is migrated here; any other must already be current."""
    if settings.database_url is None:
        migrate(settings)
    else:
        require_current_schema(settings)


def render_item(type_: str, obj: Any, _autogen_context: Any) -> str | Literal[False]:
    """Autogenerate writes the service's column types as plain SQLAlchemy types, so migrations import nothing
    from the code (they must keep working after the ORM changes)."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, EnumText):
        return f"sa.String(length={obj.impl.length})"
    return False
