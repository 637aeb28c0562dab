"""The optimize step's candidate chain: QAT (a distill step on the quantized model) follows quantize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compression.optimize.config import OptimizeConfig
from compression.optimize.search import chain, is_qat, trainable_qdq
from compression.quantization.config import AutoQuantizeConfig
from compression.training.config import DistillConfig


def test_qat_follows_quantize_when_there_is_train_data() -> None:
    config = OptimizeConfig(qat_epochs=3, qat_lr=5e-4)
    steps, skipped = chain(config, 0.5, has_train=True)
    assert [type(s) for s in steps][-2:] == [AutoQuantizeConfig, DistillConfig] and not skipped
    qat = steps[-1]
    assert isinstance(qat, DistillConfig) and qat.epochs == 3 and qat.lr == 5e-4 and qat.qat == "auto"
    assert is_qat(steps, len(steps) - 1) and not is_qat(steps, 1)  # the post-prune distill is not QAT
    steps, skipped = chain(config, 0.0, has_train=False)
    assert [type(s) for s in steps] == [AutoQuantizeConfig] and any("QAT" in s for s in skipped)
    steps, _ = chain(OptimizeConfig(qat_epochs=0), 0.0, has_train=True)
    assert [type(s) for s in steps] == [AutoQuantizeConfig]


def test_only_a_qdq_graph_with_integer_weights_is_trained(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    float_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "f",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w],
    )  # fmt: skip
    inits = [
        numpy_helper.from_array(np.ones((2, 2), np.int8), "w_q"),
        numpy_helper.from_array(np.array(0.1, np.float32), "w_s"),
        numpy_helper.from_array(np.array(0, np.int8), "w_z"),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"]), float_graph.node[0]]
    qdq_graph = helper.make_graph(nodes, "q", float_graph.input, float_graph.output, inits)
    for graph, expected in ((float_graph, False), (qdq_graph, True)):
        path = tmp_path / f"{graph.name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        assert trainable_qdq(path) is expected
