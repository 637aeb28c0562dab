"""Each quantize mode on the trained dev models, through the real pipeline and onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
from quant_helpers import bundle, run_step

from compression.errors import MissingDatasetError
from compression.spec import CompressionSpec


@pytest.fixture(scope="module")
def static_runs(digits_cnn, residual_cnn, tmp_path_factory):
    """static per-channel QDQ on both CNNs, shared by the target tests."""
    runs = {}
    for model in (digits_cnn, residual_cnn):
        work = tmp_path_factory.mktemp(f"static_{model.name}")
        step = {"type": "quantize", "mode": "static", "speed_guard": False}  # the guard's verdict is load-dependent
        runs[model.name] = run_step(model.path, step, bundle(model), work)
    return runs


@pytest.mark.parametrize("name", ["digits_cnn", "residual_cnn"])
def test_static_per_channel_qdq_meets_targets(static_runs, name):
    result, _ = static_runs[name]
    metrics = result.metrics
    assert metrics.fidelity.accuracy.drop <= 0.005
    assert metrics.ratios["size"] <= 0.27
    # measured 0.39-0.54 on a quiet machine (bench/quantization.py), ~1.0 for the tiny digits CNN at load 5:
    # the figure is the bench's; the test only rules out a slow kernel trap (several times slower)
    assert metrics.ratios["latency"] < 1.6
    details = metrics.steps[0].details
    assert details["within_budget"] and not details["input_model_returned"]


def test_single_channel_stem_choice_is_measured(static_runs):
    """QLinearConv over 1 input channel is slower than float NCHWc Conv; the step times both ways."""
    small = static_runs["digits_cnn"][0].metrics.steps[0].details["small_convs"]
    assert small["nodes"] == ["conv1"]
    assert small["kept_float"] == (small["latency_ms_float"] < small["latency_ms_int8"])


def test_dynamic_digits_cnn_contract(digits_cnn, tmp_path):
    """The service contract: accuracy within 1 point, size <= 35%, and not slower (no ConvInteger)."""
    step = {"type": "quantize", "mode": "dynamic", "weight_type": "int8", "per_channel": False, "speed_guard": False}
    result, _ = run_step(digits_cnn.path, step, bundle(digits_cnn), tmp_path)
    metrics = result.metrics
    assert metrics.fidelity.accuracy.drop <= 0.01
    assert metrics.ratios["size"] <= 0.35
    assert metrics.ratios["latency"] < 1.6  # the ConvInteger trap is 5-8x slower; near 1.0 is noise (bench)
    assert metrics.steps[0].details["conv_int8_storage"] == 2


def test_dynamic_transformer_block(transformer_block, tmp_path):
    result, _ = run_step(
        transformer_block.path,
        {"type": "quantize", "mode": "dynamic", "speed_guard": False},
        bundle(transformer_block),
        tmp_path,
    )
    metrics = result.metrics
    assert metrics.fidelity.top1_agreement >= 0.99
    assert metrics.ratios["latency"] < 1.3  # measured 0.67-0.91 (bench); the figure is the bench's, not a test's
    assert metrics.ratios["size"] < 0.5


def test_weight_only_int4_transformer_block(transformer_block, tmp_path):
    step = {"type": "quantize", "mode": "weight_only", "bits": 4, "block_size": 32, "speed_guard": False}
    result, _ = run_step(transformer_block.path, step, bundle(transformer_block), tmp_path)
    assert "MatMulNBits" in _ops(result.model_path)
    assert result.metrics.fidelity.accuracy.drop <= 0.01
    assert result.metrics.ratios["size"] < 0.4


def test_weight_only_hqq_mlp_with_budget(mlp, tmp_path):
    step = {
        "type": "quantize",
        "mode": "weight_only",
        "algorithm": "hqq",
        "max_accuracy_drop": 0.01,
        "speed_guard": False,
    }
    result, _ = run_step(mlp.path, step, bundle(mlp), tmp_path)
    details = result.metrics.steps[0].details
    assert details["within_budget"]
    assert result.metrics.fidelity.accuracy.drop <= 0.01
    # a budget was set, so the per-node table is reported even though the first attempt met it
    assert {row["node"] for row in details["sensitivity"]} == {"fc1_matmul", "fc2_matmul", "fc3_matmul"}


def test_fp16_keeps_float32_io(mlp, tmp_path):
    result, _ = run_step(mlp.path, {"type": "quantize", "mode": "fp16"}, bundle(mlp), tmp_path)
    import onnx

    model = onnx.load(str(result.model_path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert result.metrics.fidelity.top1_agreement >= 0.99
    assert result.metrics.ratios["size"] < 0.6


def test_static_without_calibration_fails_clearly(digits_cnn, tmp_path):
    with pytest.raises(MissingDatasetError, match="synthetic_calibration"):
        run_step(
            digits_cnn.path, {"type": "quantize", "mode": "static"}, bundle(digits_cnn, calibration=False), tmp_path
        )


def test_static_synthetic_calibration_is_flagged(digits_cnn, tmp_path):
    step = {"type": "quantize", "mode": "static", "synthetic_calibration": True, "speed_guard": False}
    result, recorder = run_step(digits_cnn.path, step, bundle(digits_cnn, calibration=False), tmp_path)
    assert result.metrics.steps[0].details["synthetic_calibration"] is True
    assert "synthetic" in recorder.text()


def test_unknown_excluded_node_is_reported(mlp, tmp_path):
    step = {"type": "quantize", "mode": "dynamic", "nodes_to_exclude": ["fc9"], "speed_guard": False}
    result, recorder = run_step(mlp.path, step, bundle(mlp), tmp_path)
    assert result.metrics.steps[0].details["unknown_nodes_to_exclude"] == ["fc9"]
    assert "check the spelling" in recorder.text()


def test_exclusions_are_honoured(digits_cnn, tmp_path):
    step = {
        "type": "quantize",
        "mode": "static",
        "format": "qoperator",
        "nodes_to_exclude": ["fc1"],
        "speed_guard": False,
    }
    result, _ = run_step(digits_cnn.path, step, bundle(digits_cnn), tmp_path / "nodes")
    ops = {node.name: node.op_type for node in _graph(result.model_path).node}
    assert ops["fc1"] == "Gemm" and "QGemm" in ops.values()  # fc2 quantized, fc1 kept float
    step = {"type": "quantize", "mode": "dynamic", "op_types_to_exclude": ["Gemm"], "speed_guard": False}
    result, _ = run_step(digits_cnn.path, step, bundle(digits_cnn), tmp_path / "types")
    ops = {node.name: node.op_type for node in _graph(result.model_path).node}
    assert "MatMulInteger" not in ops.values()  # onnxruntime splits Gemm into MatMul+Add, both float


def test_config_union_rejects_bad_fields():
    with pytest.raises(ValueError, match="block_size"):
        CompressionSpec(steps=[{"type": "quantize", "mode": "weight_only", "block_size": 48}])
    with pytest.raises(ValueError):
        CompressionSpec(steps=[{"type": "quantize", "mode": "static", "format": "qdqx"}])
    spec = CompressionSpec(steps=[{"type": "quantize", "mode": "dynamic", "weight_type": "uint8", "per_channel": True}])
    assert spec.steps[0].mode == "dynamic"


def _graph(path: Path):
    import onnx

    return onnx.load(str(path)).graph


def _ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_weight_only_gather_converts_opset_and_loads(transformer_block, tmp_path):
    """int4 Gather needs opset 21: the graph is converted, not just relabelled (ReduceMean changed)."""
    step = {"type": "quantize", "mode": "weight_only", "op_types": ["MatMul", "Gather"], "speed_guard": False}
    result, _ = run_step(transformer_block.path, step, bundle(transformer_block), tmp_path)
    details = result.metrics.steps[0].details
    assert not details["input_model_returned"], details.get("reason")
    assert {"GatherBlockQuantized", "MatMulNBits"} <= _ops(result.model_path)
    assert result.metrics.ratios["size"] < 0.25


def test_weight_only_gptq_uses_calibration(transformer_block, tmp_path):
    step = {"type": "quantize", "mode": "weight_only", "algorithm": "gptq", "speed_guard": False}
    result, _ = run_step(transformer_block.path, step, bundle(transformer_block), tmp_path / "gptq")
    assert "MatMulNBits" in _ops(result.model_path)
    assert result.metrics.fidelity.accuracy.drop <= 0.01
    with pytest.raises(MissingDatasetError, match="gptq"):
        run_step(transformer_block.path, step, bundle(transformer_block, calibration=False), tmp_path / "none")


@pytest.mark.parametrize("method", ["entropy", "percentile", "distribution"])
def test_static_calibration_methods(digits_cnn, tmp_path, method):
    step = {
        "type": "quantize",
        "mode": "static",
        "calibration_method": method,
        "max_accuracy_drop": 0.01,
        "speed_guard": False,  # int8 Conv is slower than float on CPUs without VNNI: the guard is not tested here
    }
    result, _ = run_step(digits_cnn.path, step, bundle(digits_cnn), tmp_path)
    details = result.metrics.steps[0].details
    assert details["within_budget"] and not details["input_model_returned"], details.get("reason")
    assert result.metrics.fidelity.accuracy.drop <= 0.01
    # 'distribution' clips this CNN's ranges too hard (-2.4 points at first): the search keeps the
    # sensitive layers float to hold the budget, so only the other methods reach int8 size
    assert result.metrics.ratios["size"] <= 0.3 or details["nodes_kept_float"]


def test_static_per_tensor_qoperator_int8_activations(residual_cnn, tmp_path):
    """The 'global' variant and onnxruntime's int8 activations still meet the budget (speed aside)."""
    step = {
        "type": "quantize",
        "mode": "static",
        "format": "qoperator",
        "per_channel": False,
        "activation_type": "int8",
        "max_accuracy_drop": 0.01,
        "speed_guard": False,
    }
    result, _ = run_step(residual_cnn.path, step, bundle(residual_cnn), tmp_path)
    assert "QLinearConv" in _ops(result.model_path)
    assert result.metrics.fidelity.accuracy.drop <= 0.01
