"""Database engines and sessions; SQLite (embedded) gets WAL and a busy timeout for the api+worker pair.

The schema is not created here: `service.schema` applies the Alembic migrations (`onnx-compress migrate`).
Heartbeats get an engine of their own with short timeouts (`quick=True`), so a busy pool or a slow statement
on the job's side never delays a lease renewal, and a renewal that hangs gives up and is retried.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings

DB_TIMEOUT_S = 30.0  # the job store's lock wait (SQLite busy timeout)
WAL_RETRY_S = 0.05


def _enable_wal(cursor: sqlite3.Cursor, timeout_s: float) -> None:
    """Switch to WAL, retrying until `timeout_s`: when several processes open a new database file at once, the
    switch answers "database is locked" at once (SQLite does not call the busy handler there: two connections
    upgrading the same shared lock would deadlock), so the busy timeout does not cover it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(WAL_RETRY_S)


def _sqlite_pragmas(timeout_s: float) -> Any:
    def set_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        _enable_wal(cursor, timeout_s)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return set_pragmas


def _postgres_timeouts(timeout_s: float) -> Any:
    def set_timeouts(dbapi_connection, _record) -> None:  # noqa: ANN001
        milliseconds = int(timeout_s * 1000)
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # session settings, outside any transaction
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {milliseconds}")
            cursor.execute(f"SET lock_timeout = {milliseconds}")
        dbapi_connection.autocommit = autocommit

    return set_timeouts


SQLITE_POOL_SIZE = 16  # SQLite connections kept open per process (the API's thread pool is 40)
_engines: dict[tuple[str, float | None], Engine] = {}
# per settings (database_url, data_dir, quick timeout, and the working directory a relative data_dir is read
# from): the engine, so a request does not resolve the SQLite path and create its folder again
_settings_engines: dict[tuple[str | None, Path, float | None, str | None], Engine] = {}


def engine_for(url: str, quick_timeout_s: float | None = None) -> Engine:
    """The process's engine for `url`; with `quick_timeout_s`, a separate small engine whose connections give up
    (connect, lock wait, statement) after that many seconds."""
    key = (url, quick_timeout_s)
    engine = _engines.get(key)
    if engine is None:
        timeout_s = quick_timeout_s or DB_TIMEOUT_S
        if url.startswith("sqlite"):
            # pool as large as the API's concurrent readers: an overflow connection is closed on return and
            # opened again (with its pragmas) on the next request, a third of a status read's database time
            engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": timeout_s},
                pool_size=SQLITE_POOL_SIZE,
                max_overflow=SQLITE_POOL_SIZE,
            )
            event.listen(engine, "connect", _sqlite_pragmas(timeout_s))
        elif quick_timeout_s is None:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        else:
            connect_timeout = max(1, round(quick_timeout_s))
            connect_args = {"connect_timeout": connect_timeout} if url.startswith("postgresql") else {}
            engine = create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=1, connect_args=connect_args)
            if url.startswith("postgresql"):
                event.listen(engine, "connect", _postgres_timeouts(quick_timeout_s))
        _engines[key] = engine
    return engine


def forget_inherited_connections() -> None:
    """After a fork: the child must not reuse the parent's pooled connections (nor close them)."""
    for engine in _engines.values():
        engine.dispose(close=False)


def get_engine(settings: Settings, quick_timeout_s: float | None = None) -> Engine:
    relative_to = None if settings.data_dir.is_absolute() else os.getcwd()
    key = (settings.database_url, settings.data_dir, quick_timeout_s, relative_to)
    engine = _settings_engines.get(key)
    if engine is None:
        if settings.resolved_database_url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = _settings_engines[key] = engine_for(settings.resolved_database_url, quick_timeout_s)
    return engine


@lru_cache
def _session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings, quick_timeout_s: float | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (workers use it); `quick_timeout_s` as in
    `engine_for`."""
    session = _session_factory(get_engine(settings, quick_timeout_s))()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()
