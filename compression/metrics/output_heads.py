"""Which graph outputs are scores: computed by a linear head (MatMul/Gemm, plus a constant bias) or a
Softmax/LogSoftmax/Sigmoid, through reshapes. Read from the graph, not from the values.

A tagger's or recognizer's per-step logits ([N, T, C], C tags) are not probability distributions, so the
values alone cannot tell them from per-step features; but what the user reads from them is the argmax per
step, and a per-step cosine of 0.99 still lets 5% of the argmaxes flip between two close tags. The budget
judges such outputs by top-1 agreement per step (compression/quantization/budget.py). Features come out of
RNNs, normalizations and activations, and keep the cosine floors.
"""

from __future__ import annotations

from pathlib import Path

import onnx

PASS_THROUGH = frozenset({"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast"})
SCORE_OPS = frozenset({"Softmax", "LogSoftmax", "Sigmoid"})
LINEAR_OPS = frozenset({"MatMul", "Gemm"})
MAX_STEPS = 8  # pass-through and bias nodes walked back from an output


def score_head_outputs(model_path: Path) -> set[str]:
    """Names of the main graph's outputs that a score head computes."""
    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    producer = {out: node for node in graph.node for out in node.output}
    return {value.name for value in graph.output if _is_score_head(value.name, producer, constants)}


def _is_score_head(name: str, producer: dict[str, onnx.NodeProto], constants: set[str]) -> bool:
    for _ in range(MAX_STEPS):
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type in SCORE_OPS or node.op_type in LINEAR_OPS:
            return True
        if node.op_type in PASS_THROUGH and node.input:
            name = node.input[0]
            continue
        if node.op_type == "Add":  # a bias: one constant side, follow the other
            computed = [i for i in node.input if i and i not in constants]
            if len(computed) == 1:
                name = computed[0]
                continue
        return False
    return False
