"""Outputs whose length varies per input are judged input by input, like aligned ones.

The case seen on PaddleOCR's SLANet+ table recognizer: its step scores come out of a `Loop` that stops at a
data-dependent step, so the eval outputs could not be stacked; they were flattened and judged by one pooled
cosine (0.9998) while the worst step was at 0.905, and `auto` returned that model. The model here keeps the
first k steps of a per-step softmax, k = the number of steps whose first feature passes a threshold (a
data-dependent Slice), built in the test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from quant_helpers import save

from compression.datasets import Dataset
from compression.metrics.evaluation import Evaluator
from compression.metrics.fidelity import OutputKind, cosine
from compression.model_info import inspect_model
from compression.quantization.budget import Budget, BudgetMetric, judge
from compression.settings import EngineSettings

STEPS, WIDTH, SAMPLES = 16, 8, 32


def stepper(threshold: float = 0.0, varying: bool = True) -> onnx.ModelProto:
    """x[1, T, C] -> softmax(x W) over C, cut to the steps counted by x[..., 0] > threshold (all T if not varying)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([threshold], np.float32), "threshold"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([STEPS], np.int64), "all_steps"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("Slice", ["x", "zero", "one", "axis2"], ["first"]),  # [1, T, 1]
        helper.make_node("Greater", ["first", "threshold"], ["passes"]),
        helper.make_node("Cast", ["passes"], ["counted"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["counted"], ["count"], keepdims=0),
        helper.make_node("Reshape", ["count", "one"], ["varying_end"]),
        helper.make_node("Identity", ["varying_end" if varying else "all_steps"], ["end"]),
        helper.make_node("Slice", ["probs", "zero", "end", "axis1"], ["steps"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stepper",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STEPS, WIDTH])],
        [helper.make_tensor_value_info("steps", TensorProto.FLOAT, [1, None, WIDTH])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def evaluator_for(path: Path) -> Evaluator:
    x = np.random.default_rng(1).standard_normal((SAMPLES, 1, STEPS, WIDTH)).astype(np.float32)  # stacked feeds
    return Evaluator(path, Dataset.bind({"x": x}, inspect_model(path).inputs), EngineSettings())


def test_one_damaged_step_fails_the_budget_although_the_pooled_cosine_passes(tmp_path):
    evaluator = evaluator_for(save(stepper(), tmp_path / "stepper.onnx"))
    reference = evaluator.reference_outputs["steps"]
    assert reference.dtype == object and len(reference) == SAMPLES  # one array per input, lengths differ
    assert len({sample.shape for sample in reference}) > 1
    budget = Budget.from_settings(0.01, EngineSettings())
    same = evaluator.compare_outputs({"steps": reference})
    assert same.outputs["steps"].kind == OutputKind.SEQUENCE and same.outputs["steps"].varying_shape
    assert same.outputs["steps"].step_scores and judge(same, budget).ok
    assert judge(same, budget).outputs["steps"].metric == BudgetMetric.TOP1_PER_STEP

    damaged = np.empty(SAMPLES, dtype=object)
    for i, sample in enumerate(reference):
        damaged[i] = sample.copy()
    longest = max(range(SAMPLES), key=lambda i: reference[i].shape[1])
    step = damaged[longest][0, 0]
    damaged[longest][0, 0] = np.roll(step, 1)  # one step of one input: another distribution
    flat_ref = np.concatenate([s.ravel() for s in reference])
    flat_out = np.concatenate([s.ravel() for s in damaged])
    assert cosine(flat_ref, flat_out) > 0.99  # what the flattened comparison judged

    fidelity = evaluator.compare_outputs({"steps": damaged}).outputs["steps"]
    assert fidelity.cosine > 0.99 and fidelity.worst_slice_cosine < 0.9
    verdict = judge(evaluator.compare_outputs({"steps": damaged}), budget)
    assert not verdict.ok and any("per-step" in reason for reason in verdict.reasons)


def test_an_input_that_stops_at_another_step_fails(tmp_path):
    evaluator = evaluator_for(save(stepper(), tmp_path / "stepper.onnx"))
    candidate = save(stepper(threshold=0.02), tmp_path / "stops_earlier.onnx")  # a step or two less on some inputs
    fidelity = evaluator.fidelity(candidate)
    out = fidelity.outputs["steps"]
    assert out.varying_shape and 0 < out.length_mismatches < SAMPLES
    assert out.cosine > 0.99  # the inputs whose length agrees are identical
    verdict = judge(fidelity, Budget.from_settings(0.01, EngineSettings()))
    assert not verdict.ok and any("length" in reason or "shape" in reason for reason in verdict.reasons)
    assert not judge(fidelity, Budget.from_settings(None, EngineSettings())).ok  # floors only: still failed


def test_equal_lengths_keep_the_aligned_comparison(tmp_path):
    evaluator = evaluator_for(save(stepper(varying=False), tmp_path / "fixed.onnx"))
    reference = evaluator.reference_outputs["steps"]
    assert reference.dtype == np.float32 and reference.shape == (SAMPLES, 1, STEPS, WIDTH)
    out = evaluator.compare_outputs({"steps": reference}).outputs["steps"]
    assert out.kind == OutputKind.SEQUENCE and out.varying_shape is None and out.length_mismatches is None
    damaged = reference.copy()
    damaged[3, 0, 5] = np.roll(damaged[3, 0, 5], 1)
    assert not judge(evaluator.compare_outputs({"steps": damaged}), Budget.from_settings(0.01, EngineSettings())).ok
