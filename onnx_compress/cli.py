"""`onnx-compress`: run the service (embedded or split into api and workers) or compress locally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Annotated

import typer

from compression.cli import compress, steps

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
cli.command()(compress)
cli.command()(steps)


@cli.command()
def api(
    host: Annotated[str | None, typer.Option(help="default: HOST setting")] = None,
    port: Annotated[int | None, typer.Option(help="default: PORT setting")] = None,
) -> None:
    """Start the HTTP API (production: run workers separately)."""
    import uvicorn

    from app.main import create_app
    from service.db import init_db
    from service.settings import get_settings

    settings = get_settings()
    init_db(settings)
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port, log_level="info")


@cli.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="default: WORKER_CONCURRENCY setting")] = None,
    loglevel: str = "INFO",
) -> None:
    """Start a Celery worker that runs compression jobs."""
    from service.db import init_db
    from service.settings import get_settings
    from workers.celery_app import app as celery_app

    settings = get_settings()
    init_db(settings)
    args = ["worker", f"--loglevel={loglevel}", f"--queues={settings.queue_name}", "--pool=prefork"]
    args.append(f"--concurrency={concurrency or settings.worker_concurrency}")
    celery_app.worker_main(args)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: HOST setting")] = None,
    port: Annotated[int | None, typer.Option(help="default: PORT setting")] = None,
) -> None:
    """Embedded mode: the API and one worker process, SQLite for jobs and broker, artifacts on local disk."""
    from service.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
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
