"""Schema migrations: the ORM equals the migrations, `onnx-compress migrate` is idempotent and safe to run
concurrently, the api and workers refuse a database that is behind, and old `create_all` databases are adopted."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
import yaml
from alembic import command
from sqlalchemy import inspect, text

from service.db import engine_for, forget_inherited_connections, get_engine
from service.schema import (
    BASELINE_REVISION,
    SchemaNotCurrentError,
    alembic_config,
    current_revisions,
    head_revisions,
    migrate,
    prepare_schema,
    require_current_schema,
)
from service.settings import Settings
from tests.service.stack import drop_postgres_schema, postgres_schema, production_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {"DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def postgres_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    schema = postgres_schema()
    yield production_env(tmp_path / "data", schema)
    drop_postgres_schema(schema)


def settings_from(env: dict[str, str]) -> Settings:
    return Settings(**{name.lower(): value for name, value in env.items()})


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "BROKER_URL", "DATA_DIR"}}
    return subprocess.run(args, env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=300)


def onnx_compress(*args: str) -> list[str]:
    return [sys.executable, "-m", "onnx_compress", *args]


def alembic_check(env: dict[str, str]) -> None:
    """`alembic check` from the repository root (alembic.ini) passes: no ORM change lacks a migration."""
    result = run([sys.executable, "-m", "alembic", "check"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def _migrate_in_child(env: dict[str, str], barrier: Barrier, results: Queue) -> None:
    forget_inherited_connections()
    barrier.wait()  # all children start migrating at the same moment
    try:
        results.put(sorted(migrate(settings_from(env))))
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def concurrent_migrations(env: dict[str, str], count: int = 4) -> None:
    """`count` processes migrate at once (forked, so they really overlap); none fails, all end at the head."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(count), context.Queue()
    children = [context.Process(target=_migrate_in_child, args=(env, barrier, results)) for _ in range(count)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=300) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert outcomes == [sorted(head_revisions())] * count, outcomes


def test_sqlite_migrations_equal_the_orm(sqlite_env: dict[str, str]) -> None:
    migrate(settings_from(sqlite_env))
    alembic_check(sqlite_env)


@pytest.mark.services
def test_postgres_migrations_equal_the_orm(postgres_env: dict[str, str]) -> None:
    migrate(settings_from(postgres_env))
    alembic_check(postgres_env)


def test_migrate_is_idempotent_and_concurrent_on_sqlite(sqlite_env: dict[str, str]) -> None:
    concurrent_migrations(sqlite_env)
    result = run(onnx_compress("migrate"), sqlite_env)  # again, from the command line: nothing to do
    assert result.returncode == 0 and f"database schema at {', '.join(head_revisions())}" in result.stdout
    settings = settings_from(sqlite_env)
    require_current_schema(settings)
    assert {"models", "datasets", "jobs", "job_events"} <= set(inspect(get_engine(settings)).get_table_names())


@pytest.mark.services
def test_migrate_is_idempotent_and_concurrent_on_postgres(postgres_env: dict[str, str]) -> None:
    """Finding 7: api and workers raced in `create_all`; now one migrate at a time runs (advisory lock)."""
    concurrent_migrations(postgres_env)
    concurrent_migrations(postgres_env)  # again: nothing to do
    require_current_schema(settings_from(postgres_env))


@pytest.mark.slow
@pytest.mark.services
def test_api_and_worker_refuse_a_database_that_is_behind(postgres_env: dict[str, str]) -> None:
    settings = settings_from(postgres_env)
    for command_name in ("api", "worker"):  # an empty database
        result = run(onnx_compress(command_name), postgres_env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "no revision" in result.stderr and "run `onnx-compress migrate`" in result.stderr
    with get_engine(settings).connect() as connection:  # one release behind
        command.upgrade(alembic_config(connection), BASELINE_REVISION)
        connection.commit()
    with pytest.raises(SchemaNotCurrentError, match=rf"at revision {BASELINE_REVISION}, this version needs"):
        prepare_schema(settings)  # a DATABASE_URL is never migrated behind the operator's back
    migrate(settings)
    prepare_schema(settings)


def test_embedded_database_is_migrated_by_whoever_opens_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    prepare_schema(settings)
    with get_engine(settings).connect() as connection:
        assert current_revisions(connection) == head_revisions()


def test_a_database_made_by_create_all_is_adopted(tmp_path: Path) -> None:
    """Databases from before migrations (tables made by `create_all`, no version table) keep their rows."""
    settings = Settings(data_dir=tmp_path / "data")
    with get_engine(settings).connect() as connection:
        command.upgrade(alembic_config(connection), BASELINE_REVISION)  # the tables create_all made
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(
            text(
                "INSERT INTO models (id, filename, sha256, size_bytes, info, storage_key, created_at) "
                "VALUES ('m1', 'm.onnx', 'x', 1, '{}', 'models/m1', '2025-01-02 03:04:05.000000')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, model_id, spec, datasets, status, progress, steps, cancel_requested, attempt, "
                "created_at) VALUES ('j1', 'm1', '{}', '{}', 'queued', 0, '[]', 0, 0, '2025-01-02 03:04:05.000000')"
            )
        )
        connection.commit()
    assert migrate(settings) == head_revisions()
    with get_engine(settings).connect() as connection:
        enqueued, created = connection.execute(text("SELECT enqueued_at, created_at FROM jobs")).one()
    assert enqueued == created


def test_compose_migrates_once_before_api_and_workers() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["migrate"]["command"] == ["onnx-compress", "migrate"]
    assert services["migrate"]["environment"]["DATABASE_URL"] == services["api"]["environment"]["DATABASE_URL"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def _open_in_child(url: str, barrier: Barrier, results: Queue) -> None:
    forget_inherited_connections()
    barrier.wait()
    try:
        with engine_for(url).connect() as connection:
            results.put(connection.exec_driver_sql("PRAGMA journal_mode").scalar())
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_sqlite_database_at_once_all_get_wal(tmp_path: Path) -> None:
    """The api and a worker starting together on a new embedded database: switching it to WAL answered
    "database is locked" at once to all but one (without the busy timeout); now each open waits its turn.
    Before the fix about one round in four failed, so 12 rounds of 4 processes catch it."""
    context = multiprocessing.get_context("fork")
    for round_number in range(12):
        url = f"sqlite:///{tmp_path / f'new-{round_number}.db'}"
        barrier, results = context.Barrier(4), context.Queue()
        children = [context.Process(target=_open_in_child, args=(url, barrier, results)) for _ in range(4)]
        for child in children:
            child.start()
        outcomes = [results.get(timeout=120) for _ in children]
        for child in children:
            child.join(timeout=60)
        assert outcomes == ["wal"] * 4, outcomes
