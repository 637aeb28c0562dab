"""`onnx-compress`: run the service (embedded or split into api and workers) or compress locally."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.settings import Settings

# Commands whose modules load the engine (onnx, onnxruntime, ...) or the HTTP client: imported only when run, so
# `migrate`, `api`, `worker`, `tenants`, `keys` and `--help` start without them. name -> (module, attribute, help
# line shown by `--help`; tests/test_cli_startup.py checks it against the command's own).
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "compress": (
        "compression.cli",
        "compress",
        "Run a compression spec on a local model, showing progress; prints the headline metrics.",
    ),
    "steps": ("compression.cli", "steps", "Print the JSON schema of a step (every type and mode with its fields)."),
    "submit": (
        "onnx_compress.remote_cli",
        "submit",
        "Compress on a running service: upload the model and data (or have the service import them from URLs),\n"
        "queue the spec; with --wait, show progress and write --output/--metrics (same arguments as `compress`).\n"
        "Prints the job (or a summary) as JSON.",
    ),
    "jobs": ("onnx_compress.remote_cli", "jobs_cli", "Jobs on a running service: list, get, cancel, delete, download."),
    "models": ("onnx_compress.remote_cli", "models_cli", "Uploaded models on a running service: list, delete."),
    "datasets": ("onnx_compress.remote_cli", "datasets_cli", "Uploaded datasets on a running service: list, delete."),
}


def load_command(name: str) -> click.Command:
    """The click command `name` of LAZY_COMMANDS, its module imported now."""
    module, attribute, _ = LAZY_COMMANDS[name]
    target: Any = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        command = typer.main.get_command(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name=name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyCommand(click.Command):
    """Stands in the command list for a LAZY_COMMANDS entry (name and help line); loads the real one when run."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, help=LAZY_COMMANDS[name][2])
        self._loaded: click.Command | None = None

    def load(self) -> click.Command:
        if self._loaded is None:
            self._loaded = load_command(self.name or "")
        return self._loaded

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any):
        return self.load().make_context(info_name, args, parent=parent, **extra)  # its context runs the real one

    def invoke(self, ctx: click.Context) -> Any:
        return self.load().invoke(ctx)


class LazyGroup(TyperGroup):
    """The top-level group: LAZY_COMMANDS first (as stand-ins), then the commands defined in this module."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = {**{name: LazyCommand(name) for name in LAZY_COMMANDS}, **self.commands}


cli = typer.Typer(cls=LazyGroup, no_args_is_help=True, add_completion=False, help=__doc__)


def _schema_ready_or_exit(settings: Settings) -> None:
    """Start-up: the embedded database is migrated; any other must be current, or the command exits saying why."""
    from service.schema import SchemaNotCurrentError, prepare_schema

    try:
        prepare_schema(settings)
    except SchemaNotCurrentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@cli.command()
def migrate(
    lock_timeout: Annotated[float, typer.Option(help="seconds to wait while another migration runs")] = 600.0,
) -> None:
    """Create or upgrade the job store's tables (Alembic migrations); safe to run again or concurrently."""
    from service.schema import migrate as apply_migrations
    from service.settings import get_settings

    revisions = apply_migrations(get_settings(), lock_timeout_s=lock_timeout)
    typer.echo(f"database schema at {', '.join(sorted(revisions))}")


@cli.command()
def api(
    host: Annotated[str | None, typer.Option(help="default: HOST setting")] = None,
    port: Annotated[int | None, typer.Option(help="default: PORT setting")] = None,
) -> None:
    """Start the HTTP API (production: run workers separately)."""
    import uvicorn

    from app.main import create_app
    from service.logging import configure_logging
    from service.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level, "api")
    _schema_ready_or_exit(settings)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go through service.logging's handler (LOG_FORMAT)
        access_log=False,  # the app logs each request itself, with its request id (app/observability)
    )


@cli.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="default: WORKER_CONCURRENCY setting")] = None,
    loglevel: Annotated[str | None, typer.Option(help="default: LOG_LEVEL setting")] = None,
) -> None:
    """Start a Celery worker that runs compression jobs."""
    from service.logging import configure_logging
    from service.settings import get_settings
    from workers.celery_app import app as celery_app

    settings = get_settings()
    configure_logging(settings.log_format, loglevel or settings.log_level, "worker")  # before Celery's warnings
    _schema_ready_or_exit(settings)
    queues = f"{settings.queue_name},{settings.resolved_webhook_queue_name}"  # jobs, and webhook deliveries
    args = ["worker", f"--loglevel={loglevel or settings.log_level}", f"--queues={queues}", "--pool=prefork"]
    if settings.log_format == "json":
        args.insert(0, "--quiet")  # `celery --quiet worker`: no banner, every line the worker writes is JSON
    args.append(f"--concurrency={concurrency or settings.worker_concurrency}")
    celery_app.worker_main(args)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: HOST setting")] = None,
    port: Annotated[int | None, typer.Option(help="default: PORT setting")] = None,
) -> None:
    """Embedded mode: the API and one worker process, SQLite for jobs and broker, artifacts on local disk.
    The database is migrated first."""
    from service.schema import migrate as apply_migrations
    from service.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    apply_migrations(settings)
    worker_process = subprocess.Popen([sys.executable, "-m", "onnx_compress", "worker"], env=os.environ.copy())
    # uvicorn re-raises the SIGTERM it shut down on once it has stopped: with the default action that would end
    # this process before `finally` and leave the worker running (docker stop, systemd, kill)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        api(host=host, port=port)
    finally:
        worker_process.send_signal(signal.SIGTERM)
        try:
            worker_process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_process.kill()


@cli.command()
def example(
    directory: Annotated[Path, typer.Argument(help="folder to write into (created if missing)")] = Path("example"),
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
) -> None:
    """Write a small trained model (a digits CNN), calibration/train/eval data and a spec.json to try."""
    from onnx_compress.example import run

    run(directory, seed)


tenants_cli = typer.Typer(no_args_is_help=True, help="Tenants: each owns its models, datasets, jobs and API keys.")
keys_cli = typer.Typer(no_args_is_help=True, help="API keys of tenants (stored hashed; a token is shown once).")
cli.add_typer(tenants_cli, name="tenants")
cli.add_typer(keys_cli, name="keys")


@contextmanager
def _tenant_session() -> Iterator[Session]:
    """A job store session for the tenant commands; a refused command exits 1 saying why."""
    from service.db import session_scope
    from service.settings import get_settings
    from service.tenants import TenantError

    settings = get_settings()
    _schema_ready_or_exit(settings)
    try:
        with session_scope(settings) as session:
            yield session
    except TenantError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@tenants_cli.command("create")
def tenants_create(name: Annotated[str, typer.Argument(help="a-z, 0-9, '_', '.', '-'")]) -> None:
    """Create a tenant; give it keys with `keys create --tenant NAME`."""
    from service.tenants import create_tenant

    with _tenant_session() as session:
        tenant = create_tenant(session, name)
        typer.echo(f"tenant {tenant.name} created (id {tenant.id})")


@tenants_cli.command("list")
def tenants_list() -> None:
    """The tenants (name and id)."""
    from service.tenants import list_tenants

    with _tenant_session() as session:
        for tenant in list_tenants(session):
            typer.echo(f"{tenant.name}\t{tenant.id}")


@keys_cli.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="the tenant's name (`tenants create`)")]) -> None:
    """Create a key for a tenant: the token is printed once on stdout (only its hash is stored)."""
    from service.tenants import create_key

    with _tenant_session() as session:
        key, token = create_key(session, tenant)
        typer.echo(f"key {key.id} for tenant {tenant}; the token below is not shown again", err=True)
        typer.echo(token)


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="a key id from `keys list`")]) -> None:
    """Revoke a key: its requests get 401 from now on."""
    from service.tenants import revoke_key

    with _tenant_session() as session:
        revoked = revoke_key(session, key_id)
        typer.echo(f"key {key_id} revoked" if revoked else f"key {key_id} was already revoked")


@keys_cli.command("list")
def keys_list() -> None:
    """Every key: id, tenant, created, revoked (tokens are never shown again)."""
    from service.tenants import list_keys

    with _tenant_session() as session:
        typer.echo("id\ttenant\tcreated_at\trevoked_at")
        for key in list_keys(session):
            typer.echo(f"{key.id}\t{key.tenant}\t{key.created_at}\t{key.revoked_at or '-'}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
