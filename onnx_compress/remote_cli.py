"""`onnx-compress submit` and `onnx-compress jobs ...`: the same work as `compress`, done by a running service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from compression.cli import METRICS_OPTION, OUTPUT_OPTION, SPEC_OPTION
from onnx_compress.client import API_KEY_ENV, ApiError, Client, Job, JobFailedError, Page
from service.status import JobStatus

console = Console(stderr=True)

ServerOption = Annotated[
    str, typer.Option("--server", envvar="ONNX_COMPRESS_SERVER", help="the API's base URL, e.g. http://127.0.0.1:8000")
]
ApiKeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar=API_KEY_ENV, help=f"API key (default: ${API_KEY_ENV})")
]
JobIdArgument = Annotated[str, typer.Argument(help="a job id (from `submit` or `jobs list`)")]

jobs_cli = typer.Typer(no_args_is_help=True, help="Jobs on a running service: list, get, cancel, delete, download.")
models_cli = typer.Typer(no_args_is_help=True, help="Uploaded models on a running service: list, delete.")
datasets_cli = typer.Typer(no_args_is_help=True, help="Uploaded datasets on a running service: list, delete.")


@contextmanager
def _client(server: str, api_key: str | None) -> Iterator[Client]:
    """A client; an API problem or a failed job exits 1 saying why."""
    try:
        with Client(server, api_key=api_key) as client:
            yield client
    except ApiError as exc:
        console.print(f"[red]error ({exc.code}, HTTP {exc.status}):[/red] {exc.detail}")
        raise typer.Exit(1) from exc
    except JobFailedError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    except OSError as exc:  # connection refused, unreadable file...
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read spec {path}: {exc}") from exc
    return {"steps": raw} if isinstance(raw, list) else raw


def _wait_with_bar(client: Client, job: Job) -> Job:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(str(job.status), total=1.0)

        def show(current: Job) -> None:
            bar.update(task, completed=current.progress, description=f"{current.status} {current.stage or ''}")

        return client.wait(job.id, progress=show, raise_on_failure=True)


URL_SCHEMES = ("s3://", "https://", "http://")
SOURCE_HELP = "a local file, or a URL the service imports itself (s3://bucket/key, https://...)"


def _source(value: str, what: str) -> tuple[Path | None, str | None]:
    """(path, None) for a local file, (None, url) for a URL the server fetches; a missing file is a usage error."""
    if value.lower().startswith(URL_SCHEMES):
        return None, value
    path = Path(value)
    if not path.is_file():
        raise typer.BadParameter(f"{what} {value!r} is neither an existing file nor an s3:// or https:// URL")
    return path, None


def submit(
    model: Annotated[str, typer.Argument(help=f"input .onnx: {SOURCE_HELP}")],
    spec: Annotated[Path, SPEC_OPTION],
    server: ServerOption,
    api_key: ApiKeyOption = None,
    output: Annotated[Path | None, OUTPUT_OPTION] = None,
    calibration_data: Annotated[str | None, typer.Option(help=f".npz calibration data: {SOURCE_HELP}")] = None,
    train_data: Annotated[str | None, typer.Option(help=f".npz training data: {SOURCE_HELP}")] = None,
    eval_data: Annotated[str | None, typer.Option(help=f".npz evaluation data: {SOURCE_HELP}")] = None,
    metrics: Annotated[Path | None, METRICS_OPTION] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the job, showing its progress")] = False,
) -> None:
    """Compress on a running service: upload the model and data (or have the service import them from URLs),
    queue the spec; with --wait, show progress and write --output/--metrics (same arguments as `compress`).
    Prints the job (or a summary) as JSON."""
    if (output or metrics) and not wait:
        raise typer.BadParameter("--output and --metrics need --wait (or use `jobs download` later)")
    body = _read_spec(spec)
    sources = {"calibration": calibration_data, "train": train_data, "eval": eval_data}
    data = {role: _source(value, f"--{role}-data") for role, value in sources.items() if value is not None}
    model_path, model_url = _source(model, "model")
    with _client(server, api_key) as client:
        model_id = client.upload_model(model_path, url=model_url).id
        datasets = {role: client.upload_dataset(path, url=url).id for role, (path, url) in data.items()}
        job = client.submit(model_id, body, datasets=datasets)
        console.print(f"job {job.id} queued")
        if not wait:
            typer.echo(job.model_dump_json(indent=2))
            return
        job = _wait_with_bar(client, job)
        if output:
            client.download(job.id, output)
        if metrics:
            client.download(job.id, metrics, artifact="metrics.json")
    ratios = (job.metrics or {}).get("ratios", {})
    summary = {
        "job_id": job.id,
        "status": str(job.status),
        "output": str(output) if output else None,
        "size_ratio": ratios.get("size"),
        "latency_ratio": ratios.get("latency"),
    }
    typer.echo(json.dumps(summary, indent=2))


@jobs_cli.command("list")
def jobs_list(
    server: ServerOption,
    api_key: ApiKeyOption = None,
    status: Annotated[JobStatus | None, typer.Option(help="only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, help="jobs per page")] = 20,
    cursor: Annotated[str | None, typer.Option(help="the page after this one (the `next page` a list printed)")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="every page, not only the first")] = False,
) -> None:
    """The newest jobs: id, status, progress, created; a command for the next page goes to stderr."""
    with _client(server, api_key) as client:
        typer.echo("id\tstatus\tprogress\tcreated_at")
        while True:
            page = client.list_jobs(status=status, limit=limit, cursor=cursor)
            for job in page.items:
                typer.echo(f"{job.id}\t{job.status}\t{job.progress:.2f}\t{getattr(job, 'created_at', '-')}")
            cursor = page.next_cursor
            if cursor is None or not all_pages:
                break
    if cursor is not None:  # plain stderr (no wrapping: the cursor is copied as is)
        typer.echo(f"next page: onnx-compress jobs list --cursor {cursor}", err=True)


@jobs_cli.command("get")
def jobs_get(job_id: JobIdArgument, server: ServerOption, api_key: ApiKeyOption = None) -> None:
    """The job as JSON."""
    with _client(server, api_key) as client:
        typer.echo(client.get(job_id).model_dump_json(indent=2))


@jobs_cli.command("cancel")
def jobs_cancel(job_id: JobIdArgument, server: ServerOption, api_key: ApiKeyOption = None) -> None:
    """Cancel a queued or running job."""
    with _client(server, api_key) as client:
        job = client.cancel(job_id)
    console.print(f"job {job.id}: {job.status} (cancel requested)")


@jobs_cli.command("delete")
def jobs_delete(job_id: JobIdArgument, server: ServerOption, api_key: ApiKeyOption = None) -> None:
    """Delete a job with its artifacts (a queued or running one is canceled first)."""
    with _client(server, api_key) as client:
        client.delete_job(job_id)
    console.print(f"job {job_id} deleted")


@jobs_cli.command("download")
def jobs_download(
    job_id: JobIdArgument,
    dest: Annotated[Path, typer.Argument(help="file to write")],
    server: ServerOption,
    api_key: ApiKeyOption = None,
    artifact: Annotated[str, typer.Option(help="model.onnx or metrics.json")] = "model.onnx",
) -> None:
    """Download an artifact of a succeeded job."""
    with _client(server, api_key) as client:
        client.download(job_id, dest, artifact=artifact)
    console.print(f"{artifact} of job {job_id} written to {dest}")


def _upload_commands(app: typer.Typer, kind: str) -> None:
    """`list` and `delete` for one kind of upload (model, dataset). Annotations are evaluated in the module's
    namespace (typer reads them), so they name no local variable."""
    plural = f"{kind}s"

    @app.command("list")
    def list_uploads(
        server: ServerOption,
        api_key: ApiKeyOption = None,
        limit: Annotated[int, typer.Option(min=1, help="uploads per page")] = 20,
        cursor: Annotated[str | None, typer.Option(help="the page after this one (the `next page` printed)")] = None,
        all_pages: Annotated[bool, typer.Option("--all", help="every page, not only the first")] = False,
    ) -> None:
        """The newest uploads: id, file name, bytes, created; a command for the next page goes to stderr."""
        with _client(server, api_key) as client:
            fetch = client.list_models if kind == "model" else client.list_datasets
            typer.echo("id\tfilename\tsize_bytes\tcreated_at")
            while True:
                page: Page[Any] = fetch(limit=limit, cursor=cursor)
                for item in page.items:
                    row = item.model_dump()  # the API's fields, those the client does not name included
                    columns = [row.get(name, "-") for name in ("id", "filename", "size_bytes", "created_at")]
                    typer.echo("\t".join(str(value) for value in columns))
                cursor = page.next_cursor
                if cursor is None or not all_pages:
                    break
        if cursor is not None:
            typer.echo(f"next page: onnx-compress {plural} list --cursor {cursor}", err=True)

    @app.command("delete")
    def delete_upload(
        upload_id: Annotated[str, typer.Argument(help="an id (from `list`)")],
        server: ServerOption,
        api_key: ApiKeyOption = None,
    ) -> None:
        """Delete the upload and its stored file (refused while a queued or running job needs it)."""
        with _client(server, api_key) as client:
            (client.delete_model if kind == "model" else client.delete_dataset)(upload_id)
        console.print(f"{kind} {upload_id} deleted")


_upload_commands(models_cli, "model")
_upload_commands(datasets_cli, "dataset")
