"""The `optimize` step: a budgeted search over prune sparsity, distillation and quantization (residual CNN)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from compression.datasets import Dataset, DatasetBundle
from compression.model_info import inspect_model
from compression.pipeline import run_pipeline
from compression.settings import EngineSettings
from compression.spec import CompressionSpec

pytestmark = pytest.mark.slow  # trains torch models

SETTINGS = EngineSettings(latency_runs=15, latency_warmup=2)


class Events:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []

    def progress(self, fraction: float, message: str | None = None) -> None:
        pass

    def event(self, message: str, data: dict | None = None) -> None:
        self.messages.append((message, data or {}))

    def check_canceled(self) -> None:
        pass


def _bundle(dev, folder: Path) -> DatasetBundle:  # noqa: ANN001
    inputs = inspect_model(dev.path).inputs
    train = Dataset.from_npz(dev.write_npz(folder / "train.npz", "train"), inputs)
    test = Dataset.from_npz(dev.write_npz(folder / "eval.npz", "test"), inputs)
    return DatasetBundle(train=train, calibration=train, eval=test)


def _run(dev, tmp_path: Path, step: dict):  # noqa: ANN001, ANN202
    spec = CompressionSpec.model_validate({"steps": [{"type": "optimize", **step}]})
    sink = Events()
    return run_pipeline(dev.path, spec, _bundle(dev, tmp_path), tmp_path / "work", sink, SETTINGS), sink


def test_returns_a_candidate_within_the_accuracy_target(residual_cnn, tmp_path: Path) -> None:  # noqa: ANN001
    step = {"target": {"max_accuracy_drop": 0.03}, "sparsities": [0.0, 0.5], "distill_epochs": 4, "qat_epochs": 2}
    result, sink = _run(residual_cnn, tmp_path, step)
    details = result.metrics.steps[0].details
    assert [c["sparsity"] for c in details["candidates"]] == [0.0, 0.5]
    assert details["input_model_returned"] is False
    chosen = details["candidates"][details["chosen"]]
    assert chosen["within_accuracy_target"] and chosen["latency_ratio"] is not None
    assert result.metrics.fidelity.accuracy.drop <= 0.03 + 1e-9
    assert result.metrics.ratios["size"] < 0.5  # int8 at least
    pruned = details["candidates"][1]
    assert pruned["steps"][:2] == ["prune", "distill"], pruned
    assert pruned["steps"][2].startswith("quantize"), pruned
    # quantization-aware fine-tuning follows when quantize (auto) returned a QDQ graph; which mode auto picks
    # depends on the CPU (static int8 gains with VNNI, and is slower than float without it)
    if len(pruned["steps"]) > 3:
        assert pruned["steps"][3].startswith("distill (QAT)") and not pruned["skipped"], pruned
    else:
        assert pruned["skipped"] == ["distill (QAT): quantize returned no QDQ graph with integer weights"], pruned
    assert sum(1 for message, _ in sink.messages if message == "optimize: candidate finished") == 2


def test_an_unreachable_target_returns_the_input_with_the_reason(residual_cnn, tmp_path: Path) -> None:  # noqa: ANN001
    step = {
        "target": {"max_accuracy_drop": 0.03, "size_ratio": 0.001},
        "sparsities": [0.0],
        "distill_epochs": 0,
        "qat_epochs": 0,
    }
    result, _ = _run(residual_cnn, tmp_path, step)
    details = result.metrics.steps[0].details
    assert details["input_model_returned"] is True and "no candidate meets the target" in details["reason"]
    assert result.model_path == residual_cnn.path and result.metrics.ratios["size"] == 1.0


def test_config_is_checked() -> None:
    with pytest.raises(ValidationError, match="every sparsity"):
        CompressionSpec.model_validate({"steps": [{"type": "optimize", "sparsities": [1.5]}]})
    with pytest.raises(ValidationError, match="Extra inputs"):
        CompressionSpec.model_validate({"steps": [{"type": "optimize", "target": {"latency": 0.3}}]})
