"""Quantization-aware training: QDQ ops in the executor, straight-through gradients, QAT of a QDQ graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compression.training.graph_module import OnnxGraphModule
from compression.training.qat import find_qat_weights, finish_qat, prepare_qat
from compression.training.weights import write_back


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's own QuantizeLinear/DequantizeLinear kernels (no fusion into integer kernels, whose
    u8s8 products may saturate on x86 without VNNI: a property of those kernels, not of QDQ semantics)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _torch(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    module = OnnxGraphModule(model)
    with torch.no_grad():
        out = module({k: torch.from_numpy(v) for k, v in feeds.items()})
    return [out[name].numpy() for name in module.output_names]


def _qdq_conv_model(rng: np.random.Generator, weight_type: int = TensorProto.INT8) -> onnx.ModelProto:
    """x -> Q/DQ (uint8, per tensor) -> Conv(DQ(int8 weight, per output channel), DQ(int32 bias)) -> Q/DQ -> y."""
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    w_zp = np.zeros(4, np.int8 if weight_type == TensorProto.INT8 else np.uint8)
    offset = 0 if weight_type == TensorProto.INT8 else 128
    w_q = (np.clip(np.rint(w / w_scale[:, None, None, None]), -127, 127) + offset).astype(w_zp.dtype)
    w_zp = w_zp + np.asarray(offset, w_zp.dtype)
    x_scale, x_zp = np.float32(0.02), np.uint8(128)
    b = rng.normal(0, 0.1, 4).astype(np.float32)
    b_scale = (x_scale * w_scale).astype(np.float32)
    b_q = np.rint(b / b_scale).astype(np.int32)
    inits = [
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(w_zp, "w_zp"),
        numpy_helper.from_array(np.array(x_scale), "x_scale"),
        numpy_helper.from_array(np.array(x_zp), "x_zp"),
        numpy_helper.from_array(b_q, "b_q"),
        numpy_helper.from_array(b_scale, "b_scale"),
        numpy_helper.from_array(np.zeros(4, np.int32), "b_zp"),
        numpy_helper.from_array(np.array(np.float32(0.05)), "y_scale"),
        numpy_helper.from_array(np.array(np.int8(3)), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq", "b_dq"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv", "y_scale", "y_zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("weight_type", [TensorProto.INT8, TensorProto.UINT8])
def test_qdq_graph_matches_onnxruntime(weight_type: int) -> None:
    rng = np.random.default_rng(0)
    model = _qdq_conv_model(rng, weight_type)
    feeds = {"x": rng.normal(0, 1.5, (2, 3, 6, 6)).astype(np.float32)}  # some values saturate the uint8 range
    expected, got = _ort(model, feeds)[0], _torch(model, feeds)[0]
    assert got.dtype == np.float32 and got.shape == expected.shape
    # the same codes as onnxruntime's QDQ kernels: at most a rare one-step difference on a rounding tie
    assert np.mean(np.abs(got - expected) > 1e-4) < 0.01
    assert np.max(np.abs(got - expected)) <= 0.05 + 1e-4


def test_quantize_linear_returns_the_integer_tensor_like_onnxruntime() -> None:
    """Per-axis int8 and per-tensor uint8 QuantizeLinear outputs as graph outputs: same dtype, same codes."""
    rng = np.random.default_rng(1)
    scale = np.array([0.01, 0.1, 1.0], np.float32)
    zp = np.array([0, -5, 7], np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q8"], axis=1),
        helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["qu8"]),
        helper.make_node("DequantizeLinear", ["q8", "s", "z"], ["dq"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(scale, "s"),
        numpy_helper.from_array(zp, "z"),
        numpy_helper.from_array(np.array(np.float32(0.03)), "s1"),
        numpy_helper.from_array(np.array(np.uint8(100)), "z1"),
    ]
    outputs = [helper.make_tensor_value_info(n, t, None) for n, t in
               (("q8", TensorProto.INT8), ("qu8", TensorProto.UINT8), ("dq", TensorProto.FLOAT))]  # fmt: skip
    graph = helper.make_graph(
        nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = {"x": (rng.normal(0, 3, (2, 3, 5))).astype(np.float32)}
    for expected, got in zip(_ort(model, feeds), _torch(model, feeds), strict=True):
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), atol=1e-6)


def test_straight_through_gradient_reaches_the_float_weight_and_learned_scale() -> None:
    rng = np.random.default_rng(2)
    model = _qdq_conv_model(rng)
    plan = find_qat_weights(model.graph)
    assert set(plan.weights) == {"w_q", "b_q"} and plan.learnable_scales == ["w_scale"]
    assert plan.activation_scales == ["x_scale", "y_scale"]
    assert plan.bias_links == [("b_q", "x_scale", "w_scale")]
    module = OnnxGraphModule(prepare_qat(model, plan, plan.learnable_scales), trainable=plan.learnable_scales)
    assert set(module.roles.parameters) == {"w_q", "b_q", "w_scale"}  # activation scales stay fixed
    x = torch.from_numpy(rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32))
    module.train()
    out = module({"x": x})["y"]
    out.square().sum().backward()
    for name in ("w_q", "b_q", "w_scale"):
        grad = module.tensor(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # without training the fake-quantized weights equal the integer ones: write-back restores them exactly
    values = finish_qat(module.trained_values(), plan, {"x_scale": np.float32(0.02)})
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name in ("w_q", "b_q"):
        assert values[name].dtype == originals[name].dtype
        np.testing.assert_array_equal(values[name], originals[name])
    np.testing.assert_allclose(values["w_scale"], originals["w_scale"], rtol=1e-6)  # log space round trip


def _train(module: OnnxGraphModule, x: torch.Tensor, target: torch.Tensor, steps: int, lr: float) -> None:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    module.train()
    for _ in range(steps):
        optimizer.zero_grad()
        (module({"x": x})["y"] - target).square().mean().backward()
        optimizer.step()


def test_learned_weight_and_activation_scales_move_stay_positive_and_the_bias_follows() -> None:
    """learn_scales: weight and activation scales train (log space), move by a bounded relative amount, and
    the written-back graph is consistent: int32 bias scale = input scale x weight scale, onnxruntime runs it."""
    rng = np.random.default_rng(3)
    model = _qdq_conv_model(rng)
    plan = find_qat_weights(model.graph)
    learned = plan.learnable_scales + plan.activation_scales
    module = OnnxGraphModule(prepare_qat(model, plan, learned), trainable=learned)
    assert set(learned) <= set(module.roles.parameters)
    x = torch.from_numpy(rng.normal(0, 1, (8, 3, 6, 6)).astype(np.float32))
    target = 0.5 * _torch(model, {"x": x.numpy()})[0]  # a different function: the scales must move
    _train(module, x, torch.from_numpy(target), steps=30, lr=1e-2)
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values = finish_qat(module.trained_values(), plan, originals)
    for name in learned:
        ratio = values[name] / originals[name]
        assert np.all(values[name] > 0), name
        assert np.any(np.abs(ratio - 1) > 1e-3), f"{name} did not move"
        assert np.all((ratio > 0.5) & (ratio < 2.0)), f"{name}: 30 steps of lr 1e-2 in log space moved it {ratio}"
    np.testing.assert_allclose(values["b_scale"], values["x_scale"] * values["w_scale"], rtol=1e-6)
    trained = write_back(model, values)
    feeds = {"x": x.numpy()}
    got = _ort(trained, feeds)[0]
    before = np.mean((_ort(model, feeds)[0] - target) ** 2)
    assert np.mean((got - target) ** 2) < before  # the trained graph, run by onnxruntime, fits better


def test_requantized_weights_are_within_half_a_step_of_the_trained_float_weights() -> None:
    rng = np.random.default_rng(4)
    model = _qdq_conv_model(rng)
    plan = find_qat_weights(model.graph)
    module = OnnxGraphModule(prepare_qat(model, plan), trainable=[])
    x = torch.from_numpy(rng.normal(0, 1, (8, 3, 6, 6)).astype(np.float32))
    target = torch.from_numpy(rng.normal(0, 1, _torch(model, {"x": x.numpy()})[0].shape).astype(np.float32))
    _train(module, x, target, steps=20, lr=3e-3)
    trained = module.trained_values()
    values = finish_qat(trained, plan, {})
    weight = plan.weights["w_q"]
    assert np.any(values["w_q"] != numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w_q")))
    step = weight.scale.reshape(-1, 1, 1, 1)
    inside = np.abs(trained["w_q"]) <= 127 * step
    error = np.abs(weight.dequantize(values["w_q"]) - trained["w_q"])
    assert np.all(error[inside] <= 0.5 * np.broadcast_to(step, error.shape)[inside] * (1 + 1e-5))
    assert np.all(np.abs(values["w_q"].astype(np.int32)[~inside]) >= 127)  # outside the range: saturated


def test_a_qat_step_that_hurts_returns_its_input(tmp_path: Path) -> None:
    """QAT with a wrecking learning rate (lr 1, learned scales, last epoch kept): the guard returns the input."""
    from compression.datasets import Dataset
    from compression.model_info import inspect_model
    from compression.settings import EngineSettings
    from compression.training.config import DistillConfig
    from compression.training.distiller import QuietHooks, distill

    rng = np.random.default_rng(5)
    student = _qdq_conv_model(rng)
    student_path, teacher_path = tmp_path / "student.onnx", tmp_path / "teacher.onnx"
    onnx.save(student, str(student_path))
    onnx.save(student, str(teacher_path))  # the student is already right: training can only hurt
    inputs = inspect_model(student_path).inputs
    train = Dataset.bind({"x": rng.normal(0, 1, (48, 3, 6, 6)).astype(np.float32)}, inputs)
    held = Dataset.bind({"x": rng.normal(0, 1, (16, 3, 6, 6)).astype(np.float32)}, inputs)
    config = DistillConfig(epochs=2, lr=1.0, batch_size=16, select="last", learn_scales=True, augment=0)
    outcome = distill(teacher_path, student_path, train, held, config, EngineSettings(), QuietHooks())
    assert outcome.qat_weights == 2 and outcome.learned_scales == 3
    assert outcome.best_epoch == 2 and outcome.guard is not None and not outcome.guard.accepted and outcome.kept_input
    kept = {t.name: numpy_helper.to_array(t) for t in outcome.model.graph.initializer}
    for tensor in student.graph.initializer:
        np.testing.assert_array_equal(kept[tensor.name], numpy_helper.to_array(tensor))


@pytest.mark.slow
def test_qat_after_static_quantize_keeps_a_valid_int8_qdq_graph(tmp_path: Path) -> None:
    """prune -> quantize static (QDQ) -> distill: int8 weights stay int8, onnxruntime loads it, accuracy holds."""
    import model_zoo
    from compression.datasets import Dataset, DatasetBundle
    from compression.model_info import inspect_model
    from compression.pipeline import run_pipeline
    from compression.settings import EngineSettings
    from compression.spec import CompressionSpec

    dev = model_zoo.load("digits_cnn")
    inputs = inspect_model(dev.path).inputs
    x, y = dev.feeds("train"), dev.labels("train")
    train = Dataset.bind({**x, "labels": y}, inputs)
    held = Dataset.bind({**dev.feeds("test"), "labels": dev.labels("test")}, inputs)
    bundle = DatasetBundle(calibration=train, train=train, eval=held)
    steps = [
        {"type": "prune", "method": "structured", "sparsity": 0.5, "speed_check": False},
        {"type": "quantize", "mode": "static", "max_accuracy_drop": 1.0, "objective": "size", "speed_guard": False},
    ]
    settings = EngineSettings(latency_runs=3, latency_warmup=1)
    quantized = run_pipeline(dev.path, CompressionSpec.model_validate({"steps": steps}), bundle, tmp_path / "q",
                             settings=settings).model_path  # fmt: skip
    before = onnx.load(str(quantized))
    int8_before = {t.name: t.data_type for t in before.graph.initializer if t.data_type in (TensorProto.INT8,
                                                                                              TensorProto.UINT8)}  # fmt: skip
    assert int8_before, "static quantize should store int8 weights"
    qat = {"type": "distill", "epochs": 3, "lr": 1e-3, "alpha": 0.5, "seed": 0}
    result = run_pipeline(quantized, CompressionSpec.model_validate({"steps": [qat]}), bundle, tmp_path / "qat",
                          settings=settings)  # fmt: skip
    details = result.metrics.steps[0].details
    assert details["qat"]["weights"] >= 2
    after = onnx.load(str(result.model_path))
    onnx.checker.check_model(after)
    assert {t.name: t.data_type for t in after.graph.initializer if t.name in int8_before} == int8_before
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]
    ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    assert not any(a.name == "qat_dtype" for n in after.graph.node for a in n.attribute)
    assert dev.evaluate(result.model_path) >= dev.evaluate(quantized) - 0.01
