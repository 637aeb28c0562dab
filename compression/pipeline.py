"""Runs a spec's steps in order and records metrics after each, then proves the result against the input.

A sink may also define `step_started(index, type)` and `step_finished(index, StepMetrics)`;
the service uses them to keep per-step status in the job record.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from compression.contract import NullProgress, PassContext, ProgressSink, adopt_output
from compression.datasets import DatasetBundle
from compression.errors import CompressionError, InvalidModelError, JobInterrupted, StepFailedError
from compression.metrics.evaluation import Evaluator
from compression.metrics.fidelity import Fidelity
from compression.metrics.latency import LatencyStats, RatioInterval
from compression.metrics.model_stats import model_stats
from compression.metrics.run_guard import run_limits
from compression.passes.registry import create_pass
from compression.settings import EngineSettings
from compression.spec import CompressionSpec

FINAL_STAGE = "evaluate"


class ModelMetrics(BaseModel):
    size_bytes: int
    parameters: int
    latency: LatencyStats | None = None
    accuracy: float | None = None


class StepMetrics(BaseModel):
    index: int
    type: str
    changed: bool
    wall_time_s: float
    size_bytes: int
    parameters: int
    fidelity: Fidelity | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class JobMetrics(BaseModel):
    input: ModelMetrics
    output: ModelMetrics
    ratios: dict[str, float | None]
    latency_ratio: RatioInterval | None = Field(
        None, description="output / input latency: the median per-round ratio and its confidence interval"
    )
    latency_measurement: dict[str, Any] = Field(default_factory=dict, description="rounds, wall time, why it stopped")
    fidelity: Fidelity
    steps: list[StepMetrics]
    wall_time_s: float


class PipelineResult(BaseModel):
    model_path: Path
    metrics: JobMetrics


class StepSink:
    """Maps a step's own 0..1 progress onto the whole pipeline's and tags it with the stage."""

    def __init__(self, sink: ProgressSink, index: int, total: int, stage: str) -> None:
        self.sink, self.index, self.total, self.stage = sink, index, total, stage

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.sink.progress((self.index + fraction) / self.total, message or self.stage)

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.sink.event(message, {"stage": self.stage, **(data or {})})

    def check_canceled(self) -> None:
        self.sink.check_canceled()


def _ratio(new: float | None, old: float | None) -> float | None:
    return None if new is None or not old else new / old


def run_pipeline(
    model_path: Path,
    spec: CompressionSpec,
    datasets: DatasetBundle,
    work_dir: Path,
    sink: ProgressSink | None = None,
    settings: EngineSettings | None = None,
    model_resolver: Callable[[str], Path] | None = None,
) -> PipelineResult:
    """Run the spec's steps on the model; every onnxruntime run inside is bounded in time and stops on cancel."""
    sink = sink or NullProgress()
    settings = settings or EngineSettings()
    with run_limits(settings.evaluation.max_run_seconds, sink.check_canceled):
        return _run_steps(model_path, spec, datasets, work_dir, sink, settings, model_resolver)


def _run_steps(
    model_path: Path,
    spec: CompressionSpec,
    datasets: DatasetBundle,
    work_dir: Path,
    sink: ProgressSink,
    settings: EngineSettings,
    model_resolver: Callable[[str], Path] | None,
) -> PipelineResult:
    started = time.perf_counter()
    total = len(spec.steps) + 1
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = PassContext(
        work_dir=work_dir,
        original_model=model_path,
        datasets=datasets,
        sink=sink,
        settings=settings,
        model_resolver=model_resolver,
    )
    sink.progress(0.0, "prepare")
    evaluator = ctx.reference()
    if evaluator.dataset.synthetic:
        sink.event("no eval dataset: fidelity is measured on synthetic inputs drawn from the declared shapes")

    current = model_path
    current_fidelity: Fidelity | None = None  # fidelity of `current`, once a step that changed it measured it
    step_metrics: list[StepMetrics] = []
    for index, step in enumerate(spec.steps):
        sink.check_canceled()
        step_sink = StepSink(sink, index, total, stage=f"{index}:{step.type}")
        _notify(sink, "step_started", index, step.type)
        ctx.sink = step_sink
        ctx.for_step(index, work_dir / f"step{index}_{step.type}.onnx", work_dir / f"step{index}_scratch")
        step_sink.progress(0.0)
        step_started = time.perf_counter()
        try:
            result = create_pass(step).run(current, ctx)
            returned = adopt_output(result, ctx, step.type)
        except (CompressionError, JobInterrupted):
            raise
        except Exception as exc:  # a library failure inside a pass: report it as this step's failure
            raise StepFailedError(f"step {index} ({step.type}) failed: {type(exc).__name__}: {exc}") from exc
        finally:
            assert ctx.scratch_dir is not None
            shutil.rmtree(ctx.scratch_dir, ignore_errors=True)
        metrics = StepMetrics(
            index=index,
            type=step.type,
            changed=returned is not None,
            wall_time_s=time.perf_counter() - step_started,
            fidelity=_step_fidelity(evaluator, returned, index, step.type) if returned is not None else None,
            details=result.metrics,
            **model_stats(returned or current),
        )
        step_metrics.append(metrics)
        _notify(sink, "step_finished", index, metrics)
        step_sink.progress(1.0)
        if returned is not None:  # an unchanged result is equivalent to the previous model: its fidelity stands
            if current != model_path:
                current.unlink(missing_ok=True)  # superseded: no later step may name an earlier step's model
            current, current_fidelity = returned, metrics.fidelity

    ctx.sink = StepSink(sink, len(spec.steps), total, stage=FINAL_STAGE)
    ctx.sink.progress(0.0, "measure fidelity and latency")
    fidelity = current_fidelity or evaluator.fidelity(current)
    sink.check_canceled()
    # a pair the last step already timed (same files, feed and settings) is reused, not measured again
    comparison = evaluator.compare_latency([model_path, current], check=sink.check_canceled)
    latency_in, latency_out = comparison.models
    latency_ratio = comparison.ratios[0]
    input_metrics = ModelMetrics(
        **model_stats(model_path),
        latency=latency_in,
        accuracy=fidelity.accuracy.input if fidelity.accuracy else None,
    )
    output_stats = (
        {"size_bytes": step_metrics[-1].size_bytes, "parameters": step_metrics[-1].parameters}
        if step_metrics
        else model_stats(current)
    )
    output_metrics = ModelMetrics(
        **output_stats,
        latency=latency_out,
        accuracy=fidelity.accuracy.output if fidelity.accuracy else None,
    )
    metrics = JobMetrics(
        input=input_metrics,
        output=output_metrics,
        ratios={
            "size": _ratio(output_metrics.size_bytes, input_metrics.size_bytes),
            "parameters": _ratio(output_metrics.parameters, input_metrics.parameters),
            "latency": latency_ratio.ratio,
        },
        latency_ratio=latency_ratio,
        latency_measurement=comparison.summary(),
        fidelity=fidelity,
        steps=step_metrics,
        wall_time_s=time.perf_counter() - started,
    )
    ctx.sink.progress(1.0, "done")
    return PipelineResult(model_path=current, metrics=metrics)


def _step_fidelity(evaluator: Evaluator, model_path: Path, index: int, step_type: str) -> Fidelity:
    """Every step's model must load and run: a pass that breaks the graph fails its own step."""
    try:
        return evaluator.fidelity(model_path)
    except InvalidModelError as exc:
        raise StepFailedError(f"step {index} ({step_type}) produced a model that does not run: {exc.message}") from exc


def _notify(sink: ProgressSink, hook: str, *args: Any) -> None:
    method = getattr(sink, hook, None)
    if method is not None:
        method(*args)
