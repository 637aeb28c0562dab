"""The pipeline: metrics after every step, fidelity on real data, cancellation, failures named by step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compression.datasets import Dataset, DatasetBundle
from compression.errors import InvalidModelError, JobCanceledError
from compression.metrics.fidelity import compare_output
from compression.model_info import inspect_model, validate_model
from compression.pipeline import run_pipeline
from compression.settings import EngineSettings
from compression.spec import CompressionSpec

FAST = EngineSettings(latency_runs=5, latency_warmup=1)
DYNAMIC = CompressionSpec.model_validate({"steps": [{"type": "quantize", "mode": "dynamic"}]})


def eval_bundle(model) -> DatasetBundle:
    arrays = {model.input_name: model.x_test, "labels": model.y_test}
    return DatasetBundle(eval=Dataset.bind(arrays, inspect_model(model.path).inputs))


class RecordingSink:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.progress_values: list[float] = []
        self.events: list[str] = []
        self.started: list[int] = []
        self.finished: list[int] = []
        self.checks = 0
        self.cancel_after = cancel_after

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.progress_values.append(fraction)

    def event(self, message: str, data=None) -> None:
        self.events.append(message)

    def check_canceled(self) -> None:
        self.checks += 1
        if self.cancel_after is not None and self.checks > self.cancel_after:
            raise JobCanceledError

    def step_started(self, index: int, step_type: str) -> None:
        self.started.append(index)

    def step_finished(self, index: int, metrics) -> None:
        self.finished.append(index)


def test_two_steps_record_metrics_after_each(mlp, tmp_path: Path) -> None:
    spec = CompressionSpec.model_validate(
        # no speed guard: on a loaded machine the guard may time the int8 MLP slower and hand the input back
        # (seen in make test); this test is about the metrics each step records
        {"steps": [{"type": "quantize", "mode": "dynamic", "speed_guard": False}] * 2}
    )
    sink = RecordingSink()
    result = run_pipeline(mlp.path, spec, eval_bundle(mlp), tmp_path, sink=sink, settings=FAST)
    metrics = result.metrics
    assert sink.started == sink.finished == [0, 1]
    assert sink.progress_values == sorted(sink.progress_values) and sink.progress_values[-1] == 1.0
    assert [step.index for step in metrics.steps] == [0, 1]
    assert all(step.wall_time_s > 0 for step in metrics.steps)
    # a step that changed the model measures its fidelity; the second dynamic quantize of an int8 model may hand
    # its input back (nothing left that is clearly worth it), and an unchanged step keeps the previous fidelity
    assert metrics.steps[0].changed and metrics.steps[0].fidelity is not None
    assert all((step.fidelity is not None) == step.changed for step in metrics.steps)
    assert metrics.fidelity.synthetic is False and metrics.fidelity.n_samples == len(mlp.y_test)
    assert metrics.fidelity.accuracy.input == pytest.approx(mlp.accuracy)
    assert metrics.fidelity.accuracy.drop <= 0.02
    assert metrics.output.size_bytes < metrics.input.size_bytes
    assert metrics.ratios["size"] == pytest.approx(metrics.output.size_bytes / metrics.input.size_bytes)
    assert metrics.input.latency.runs == FAST.latency.runs and metrics.input.latency.batch_size == 32
    assert result.model_path.is_file() and result.model_path != mlp.path


def test_without_eval_data_fidelity_is_synthetic(mlp, tmp_path: Path) -> None:
    sink = RecordingSink()
    result = run_pipeline(mlp.path, DYNAMIC, DatasetBundle(), tmp_path, sink=sink, settings=FAST)
    assert result.metrics.fidelity.synthetic is True and result.metrics.fidelity.accuracy is None
    assert any("synthetic" in event for event in sink.events)
    assert result.metrics.fidelity.top1_agreement is not None


def test_cancellation_propagates(mlp, tmp_path: Path) -> None:
    with pytest.raises(JobCanceledError):
        run_pipeline(mlp.path, DYNAMIC, DatasetBundle(), tmp_path, sink=RecordingSink(cancel_after=1), settings=FAST)


def test_validate_model_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        validate_model(path)


def test_collapsed_channel_shows_in_per_channel_cosine() -> None:
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 640, (256, 4))
    scores = rng.uniform(0, 1, (256, 1))
    reference = np.concatenate([boxes, scores], axis=1)
    collapsed = reference.copy()
    collapsed[:, 4] = 0.0  # all scores rounded away
    fidelity = compare_output(reference, collapsed, n_samples=256)
    assert fidelity.cosine > 0.999  # whole-tensor cosine hides it ...
    assert fidelity.min_channel_cosine == 0.0  # ... per-channel cosine does not


def test_metrics_serialize_as_strict_json() -> None:
    import json

    from compression.jsonable import to_jsonable
    from compression.pipeline import StepMetrics

    broken = compare_output(np.ones((4, 3), np.float32), np.ones((4, 2), np.float32), n_samples=4)
    step = StepMetrics(
        index=0, type="x", changed=True, wall_time_s=1.0, size_bytes=1, parameters=1,
        details={"ratio": np.float32(0.5), "table": np.arange(3), "nan": float("nan")},
    )  # fmt: skip
    data = to_jsonable(step)
    assert data["details"] == {"ratio": 0.5, "table": [0, 1, 2], "nan": None}
    assert json.loads(json.dumps(to_jsonable(broken), allow_nan=False))["max_abs_diff"] is None
