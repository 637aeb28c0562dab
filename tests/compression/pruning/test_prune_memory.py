"""The structured prune step runs the model on its calibration data in batches sized by eval_activation_memory_mb
(importance statistics, allocation trials, BatchNorm statistics), not eval_batch_size alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.contract import PassContext
from compression.datasets import Dataset, DatasetBundle
from compression.passes.registry import create_pass
from compression.settings import EngineSettings
from compression.spec import CompressionSpec
from tests.compression.wide_cnn import wide_cnn, wide_data


def _runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: EngineSettings) -> tuple[list[int], dict]:
    tmp_path.mkdir()
    source = wide_cnn(tmp_path / "wide.onnx")
    calibration = wide_data(48, 1)
    sizes: list[int] = []
    batches = Dataset.batches

    def recorded(self: Dataset, batch_size: int):  # noqa: ANN202
        for feed, labels in batches(self, batch_size):
            sizes.append(int(feed["x"].shape[0]))
            yield feed, labels

    monkeypatch.setattr(Dataset, "batches", recorded)
    bundle = DatasetBundle(calibration=calibration, eval=wide_data(8, 2))
    ctx = PassContext(work_dir=tmp_path / "work", original_model=source, datasets=bundle, settings=settings)
    step = {
        "type": "prune",
        "method": "structured",
        "sparsity": 0.5,
        "importance": "activation",
        "speed_check": False,
        "reconstruct": False,
    }  # the refit sizes its feeds by its own memory setting
    result = create_pass(CompressionSpec.model_validate({"steps": [step]}).steps[0]).run(source, ctx)
    return sizes, result.metrics


def test_calibration_runs_fit_the_memory_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ~4 MB of float tensors per sample: 16 MB allows at most 4 samples per run
    sizes, metrics = _runs(tmp_path / "small", monkeypatch, EngineSettings(eval_activation_memory_mb=16))
    assert metrics["channels_removed"] > 0 and metrics["allocation"]["method"] == "sensitivity"
    assert sizes and max(sizes) <= 4
    roomy, _ = _runs(tmp_path / "roomy", monkeypatch, EngineSettings(eval_activation_memory_mb=4096))
    assert max(roomy) >= 8  # with room, larger batches (the setting, not the data, made them small)
