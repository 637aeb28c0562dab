"""`onnx-compress`: run the service (embedded or split into api and workers) or compress locally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from compression.cli import compress, steps

if TYPE_CHECKING:
    from service.settings import Settings

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
cli.command()(compress)
cli.command()(steps)


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
    from service.settings import get_settings

    settings = get_settings()
    _schema_ready_or_exit(settings)
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port, log_level="info")


@cli.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="default: WORKER_CONCURRENCY setting")] = None,
    loglevel: str = "INFO",
) -> None:
    """Start a Celery worker that runs compression jobs."""
    from service.settings import get_settings
    from workers.celery_app import app as celery_app

    settings = get_settings()
    _schema_ready_or_exit(settings)
    args = ["worker", f"--loglevel={loglevel}", f"--queues={settings.queue_name}", "--pool=prefork"]
    args.append(f"--concurrency={concurrency or settings.worker_concurrency}")
    celery_app.worker_main(args)


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
    try:
        api(host=host, port=port)
    finally:
        worker_process.send_signal(signal.SIGTERM)
        try:
            worker_process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_process.kill()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
