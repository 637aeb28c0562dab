"""The evaluator sizes its batches and samples by the activations and outputs one sample produces."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from quant_helpers import save

from compression.datasets import Dataset
from compression.metrics.activation_size import activation_size
from compression.metrics.evaluation import Evaluator
from compression.model_info import inspect_model
from compression.settings import EngineSettings

SIDE = 64


def conv_model() -> onnx.ModelProto:
    """x[N,8,64,64] -> Conv 3x3 (32 channels) -> Relu -> y[N,32,64,64]: 1 MB of float tensors per sample."""
    weight = (np.random.default_rng(0).standard_normal((32, 8, 3, 3)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32, SIDE, SIDE])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def dataset(path, n: int) -> Dataset:
    x = np.random.default_rng(1).standard_normal((n, 8, SIDE, SIDE)).astype(np.float32)
    return Dataset.bind({"x": x}, inspect_model(path).inputs)


def test_activation_size_is_measured_per_sample(tmp_path):
    path = save(conv_model(), tmp_path / "conv.onnx")
    size = activation_size(path, dataset(path, 4).first_feed(4), 4)
    one_map = 32 * SIDE * SIDE * 4
    assert size.measured
    assert size.activations == 2 * one_map and size.outputs == one_map and size.largest == one_map


def test_eval_batch_and_samples_shrink_to_the_memory_settings(tmp_path):
    path = save(conv_model(), tmp_path / "conv.onnx")
    settings = EngineSettings(eval_activation_memory_mb=16, eval_max_output_mb=8)
    evaluator = Evaluator(path, dataset(path, 40), settings)
    assert evaluator.batch_size == 16  # 16 MB / 1 MB of activations per sample, not eval_batch_size 256
    assert evaluator.dataset.n_samples == 16  # 8 MB of outputs / 0.5 MB per sample, not all 40
    assert evaluator.latency_batch_size == 16 and evaluator.memory_bound
    assert evaluator.reference_outputs["y"].shape == (16, 32, SIDE, SIDE)
    assert evaluator.fidelity(path).worst_sample_cosine > 0.9999  # the model against itself, batched alike


def test_small_models_keep_the_configured_batch(tmp_path):
    path = save(conv_model(), tmp_path / "conv.onnx")
    evaluator = Evaluator(path, dataset(path, 40), EngineSettings())
    assert evaluator.batch_size == 256 and evaluator.dataset.n_samples == 40 and not evaluator.memory_bound
