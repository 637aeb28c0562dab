"""The prune step through the spec, the pass contract and the pipeline; the MACs counter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from prune_helpers import initializers, run
from pydantic import ValidationError

from compression.contract import PassContext
from compression.datasets import Dataset, DatasetBundle
from compression.errors import MissingDatasetError
from compression.metrics.macs import count_macs
from compression.model_info import inspect_model
from compression.passes.registry import create_pass
from compression.pipeline import run_pipeline
from compression.settings import EngineSettings
from compression.spec import CompressionSpec
from model_zoo import DevModel


def _step(**fields: object) -> object:
    return CompressionSpec.model_validate({"steps": [{"type": "prune", **fields}]}).steps[0]


def _bundle(dev: DevModel, tmp_path: Path, roles: tuple[str, ...]) -> DatasetBundle:
    inputs = inspect_model(dev.path).inputs
    loaded = {}
    for role in roles:
        split = "train" if role in ("train", "calibration") else "test"
        loaded[role] = Dataset.from_npz(dev.write_npz(tmp_path / f"{role}.npz", split, limit=300), inputs)
    return DatasetBundle(**loaded)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "n_m", "n": 4, "m": 4}, "must be smaller than m"),
        ({"method": "n_m", "sparsity": 0.75}, "contradicts 2:4"),
        ({"method": "magnitude", "sparsity": 1.5}, "less than or equal to 1"),
        ({"method": "structured", "sparsity": 0.5, "importance": "taylor"}, "'l1', 'l2' or 'activation'"),
        ({"method": "structured", "sparsity": 0.5, "round_too": 8}, "Extra inputs are not permitted"),
        ({"method": "lottery", "sparsity": 0.5}, "magnitude"),
    ],
)
def test_bad_configs_name_the_problem(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _step(**fields)


def test_activation_importance_needs_data(mlp: DevModel, tmp_path: Path) -> None:
    ctx = PassContext(work_dir=tmp_path, original_model=mlp.path, datasets=DatasetBundle())
    step = _step(method="structured", sparsity=0.5, importance="activation")
    with pytest.raises(MissingDatasetError, match="'calibration' or 'train'"):
        create_pass(step).run(mlp.path, ctx)


def test_activation_importance_removes_silent_channels(digits_cnn: DevModel, tmp_path: Path) -> None:
    """Channels a large negative bias keeps below zero have big weights but no activation after ReLU.

    Together with the units training left dead they make exactly half of fc1; activation importance
    must remove exactly those, so the outputs stay the same (l1 importance would not find them).
    """
    model = digits_cnn.load_onnx()
    model.graph.output.append(onnx.ValueInfoProto(name="relu3_out"))
    probe = tmp_path / "probe.onnx"
    onnx.save(model, str(probe))
    activation = run(probe, digits_cnn.feeds("train", 300))[1].mean(axis=0)
    alive = np.flatnonzero(activation > 0)
    silent = alive[: 32 - (64 - len(alive))]
    del model.graph.output[-1]
    for tensor in model.graph.initializer:
        if tensor.name == "fc1.bias":
            bias = onnx.numpy_helper.to_array(tensor).copy()
            bias[silent] = -1e4
            tensor.CopyFrom(onnx.numpy_helper.from_array(bias, tensor.name))
    source = tmp_path / "silent.onnx"
    onnx.save(model, str(source))
    ctx = PassContext(work_dir=tmp_path, original_model=source, datasets=_bundle(digits_cnn, tmp_path, ("train",)))
    step = _step(method="structured", sparsity=0.5, importance="activation", exclude=["conv1", "conv2"])
    result = create_pass(step).run(source, ctx)
    kept_bias = initializers(result.model_path)["fc1.bias"]
    assert kept_bias.shape == (32,) and (kept_bias > -1e3).all()
    feeds = digits_cnn.feeds(limit=64)
    np.testing.assert_allclose(run(result.model_path, feeds)[0], run(source, feeds)[0], rtol=1e-4, atol=1e-4)


def test_pipeline_runs_structured_prune_and_reports(residual_cnn: DevModel, tmp_path: Path) -> None:
    spec = CompressionSpec.model_validate(
        {"steps": [{"type": "prune", "method": "structured", "sparsity": 0.5, "importance": "l2", "round_to": 8}]}
    )
    settings = EngineSettings(latency_runs=5, latency_warmup=1)
    result = run_pipeline(
        residual_cnn.path, spec, _bundle(residual_cnn, tmp_path, ("eval",)), tmp_path / "work", settings=settings
    )
    details = result.metrics.steps[0].details
    assert details["method"] == "structured" and result.metrics.steps[0].changed
    assert details["after"]["parameters"] < 0.3 * details["before"]["parameters"]
    assert details["macs_ratio"] < 0.3
    assert details["skipped"] == [{"producers": ["fc"], "reason": "tensor 'logits' is a graph output"}]
    assert all(g["kept"] % 8 == 0 for g in details["groups"] if g["status"] == "pruned")
    assert result.metrics.fidelity.accuracy is not None


def test_magnitude_step_reports_gzip_next_to_raw(mlp: DevModel, tmp_path: Path) -> None:
    ctx = PassContext(work_dir=tmp_path, original_model=mlp.path, datasets=DatasetBundle())
    result = create_pass(_step(method="magnitude", sparsity=0.8, skip_first_last=False)).run(mlp.path, ctx)
    metrics = result.metrics
    assert metrics["achieved_sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert metrics["after"]["gzip_bytes"] < 0.5 * metrics["before"]["gzip_bytes"]
    assert metrics["after"]["size_bytes"] >= 0.95 * metrics["before"]["size_bytes"], "zeros are still stored"


def test_macs_of_digits_cnn_by_hand(digits_cnn: DevModel) -> None:
    conv1 = 16 * 8 * 8 * 1 * 9
    conv2 = 32 * 8 * 8 * 16 * 9
    fc1 = 512 * 64
    fc2 = 64 * 10
    assert count_macs(digits_cnn.path) == {"macs": conv1 + conv2 + fc1 + fc2, "uncounted_nodes": 0}


def test_macs_with_explicit_input_shape(tmp_path: Path, third_party_model) -> None:  # noqa: ANN001
    path = third_party_model("ppocr_cls")
    small = count_macs(path, {"x": [1, 3, 48, 96]})["macs"]
    large = count_macs(path, {"x": [1, 3, 48, 192]})["macs"]
    assert large == pytest.approx(2 * small, rel=0.1)


def test_batchnorm_recalibration_recovers_accuracy(residual_cnn: DevModel, tmp_path: Path) -> None:
    datasets = _bundle(residual_cnn, tmp_path, ("train",))
    accuracy = {}
    for recalibrate in (False, True):
        ctx = PassContext(work_dir=tmp_path / str(recalibrate), original_model=residual_cnn.path, datasets=datasets)
        step = _step(
            method="structured", sparsity=0.25, importance="l2", recalibrate_batchnorm=recalibrate, reconstruct=False
        )  # reconstruction alone already brings it back (test_reconstruction.py)
        result = create_pass(step).run(residual_cnn.path, ctx)
        accuracy[recalibrate] = residual_cnn.evaluate(result.model_path)
        onnx.checker.check_model(str(result.model_path), full_check=True)
    assert len(result.metrics["batchnorm_recalibrated"]) == 6
    assert accuracy[True] >= accuracy[False] + 0.15, accuracy


def test_batchnorm_recalibration_without_data_is_reported(residual_cnn: DevModel, tmp_path: Path) -> None:
    ctx = PassContext(work_dir=tmp_path, original_model=residual_cnn.path, datasets=DatasetBundle())
    result = create_pass(_step(method="magnitude", sparsity=0.5)).run(residual_cnn.path, ctx)
    assert result.metrics["batchnorm_recalibrated"] == "skipped (needs a calibration or train dataset)"
