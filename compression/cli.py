"""`onnx-compress compress`: the engine from the command line, no service needed."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from compression.datasets import DatasetBundle
from compression.errors import CompressionError
from compression.jsonable import to_jsonable
from compression.model_info import inspect_model, validate_model
from compression.pipeline import StepMetrics, run_pipeline
from compression.report import job_context, write_report
from compression.settings import EngineSettings
from compression.spec import CompressionSpec, step_json_schema

console = Console(stderr=True)


class ConsoleProgress:
    def __init__(self, progress: Progress) -> None:
        self.bar = progress
        self.task = progress.add_task("prepare", total=1.0)

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.bar.update(self.task, completed=fraction, description=message or "")

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.bar.console.print(f"[dim]{message}[/dim]")

    def check_canceled(self) -> None:
        pass

    def step_started(self, index: int, step_type: str) -> None:
        self.bar.console.print(f"step {index}: {step_type}")

    def step_finished(self, index: int, metrics: StepMetrics) -> None:
        self.bar.console.print(f"step {index} done in {metrics.wall_time_s:.2f} s, {metrics.size_bytes} bytes")


def load_spec(path: Path) -> CompressionSpec:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read spec {path}: {exc}") from exc
    if isinstance(raw, list):  # a bare list of steps is accepted too
        raw = {"steps": raw}
    try:
        return CompressionSpec.model_validate(raw)
    except ValidationError as exc:
        raise typer.BadParameter(f"invalid spec {path}:\n{exc}") from exc


# options shared by `compress` (local) and `submit` (remote, onnx_compress/cli.py): the same arguments for both
MODEL_ARGUMENT = typer.Argument(exists=True, dir_okay=False, help="input .onnx")
SPEC_OPTION = typer.Option("--spec", exists=True, dir_okay=False, help="JSON spec: {'steps': [...]}")
OUTPUT_OPTION = typer.Option("--output", "-o", help="where to write the compressed .onnx")
CALIBRATION_OPTION = typer.Option("--calibration-data", exists=True, dir_okay=False, help=".npz calibration data")
TRAIN_OPTION = typer.Option("--train-data", exists=True, dir_okay=False, help=".npz training data")
EVAL_OPTION = typer.Option("--eval-data", exists=True, dir_okay=False, help=".npz evaluation data")
METRICS_OPTION = typer.Option("--metrics", help="write metrics JSON here")


def compress(
    model: Annotated[Path, MODEL_ARGUMENT],
    spec: Annotated[Path, SPEC_OPTION],
    output: Annotated[Path, OUTPUT_OPTION],
    calibration_data: Annotated[Path | None, CALIBRATION_OPTION] = None,
    train_data: Annotated[Path | None, TRAIN_OPTION] = None,
    eval_data: Annotated[Path | None, EVAL_OPTION] = None,
    metrics: Annotated[Path | None, METRICS_OPTION] = None,
    report: Annotated[Path | None, typer.Option(help="write a self-contained HTML report here")] = None,
    latency_runs: int = 50,
    threads: int = 1,
) -> None:
    """Run a compression spec on a local model, showing progress; prints the headline metrics."""
    pipeline_spec = load_spec(spec)
    bundle: DatasetBundle | None = None
    try:
        validate_model(model)
        inputs = inspect_model(model).inputs
        bundle = DatasetBundle.load({"calibration": calibration_data, "train": train_data, "eval": eval_data}, inputs)
        settings = EngineSettings(latency_runs=latency_runs, latency_threads=threads)
        with (
            tempfile.TemporaryDirectory() as work,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            result = run_pipeline(model, pipeline_spec, bundle, Path(work), ConsoleProgress(progress), settings)
            output.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result.model_path, output)
    except CompressionError as exc:
        console.print(f"[red]error ({exc.code}):[/red] {exc.message}")
        if report:
            write_report(report, None, job_context(model.name, pipeline_spec, bundle, error=exc.message))
        raise typer.Exit(2) from exc
    data = to_jsonable(result.metrics)
    if metrics:
        metrics.write_text(json.dumps(data, indent=2))
    if report:
        write_report(report, data, job_context(model.name, pipeline_spec, bundle))
    ratios = data["ratios"]
    summary = {
        "output": str(output),
        "size_ratio": ratios["size"],
        "latency_ratio": ratios["latency"],
        "accuracy": data["fidelity"]["accuracy"],
        "top1_agreement": data["fidelity"]["top1_agreement"],
    }
    typer.echo(json.dumps(summary, indent=2))


def steps() -> None:
    """Print the JSON schema of a step (every type and mode with its fields)."""
    typer.echo(json.dumps(step_json_schema(), indent=2))
