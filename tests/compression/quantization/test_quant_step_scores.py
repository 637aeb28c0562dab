"""A sequence tagger's per-step logits are judged by top-1 agreement per step, not by cosine alone.

The case seen on Baidu's LAC tagger: a changed model whose predicted tags differed on 5.1% of positions
passed every cosine floor (its logits are not probability distributions, so the budget used cosine).
The tagger here (embedding -> linear head, C tags) is built in the test; the changed outputs swap the two
top tags on the 5% of positions where they are closest, which moves every step's cosine by little.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from quant_helpers import save

from compression.datasets import Dataset
from compression.metrics.evaluation import Evaluator
from compression.metrics.fidelity import compare
from compression.metrics.output_heads import score_head_outputs
from compression.model_info import inspect_model
from compression.quantization.budget import Budget, BudgetMetric, judge
from compression.settings import EngineSettings

VOCAB, EMBED, TAGS, STEPS = 200, 16, 59, 32


def tagger() -> onnx.ModelProto:
    """token_ids[N, T] -> Gather(embedding) -> features[N, T, E]; MatMul + bias -> tag logits[N, T, C]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, EMBED)).astype(np.float32), "embedding"),
        numpy_helper.from_array((rng.standard_normal((EMBED, TAGS)) * 0.3).astype(np.float32), "W"),
        numpy_helper.from_array((rng.standard_normal(TAGS) * 0.1).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "token_ids"], ["features"], name="embed"),
        helper.make_node("MatMul", ["features", "W"], ["projected"], name="head"),
        helper.make_node("Add", ["projected", "b"], ["biased"], name="head_bias"),
        helper.make_node("Identity", ["biased"], ["logits"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "tagger",
        [helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["n", STEPS])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", STEPS, TAGS]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", STEPS, EMBED]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def swap_closest_top_two(logits: np.ndarray, share: float) -> np.ndarray:
    """Swap the top-2 logits on the `share` of positions where they are closest: the argmax flips there."""
    flat = logits.reshape(-1, logits.shape[-1]).copy()
    order = np.argsort(flat, axis=1)
    first, second = order[:, -1], order[:, -2]
    rows = np.arange(len(flat))
    margin = flat[rows, first] - flat[rows, second]
    chosen = np.argsort(margin)[: int(round(share * len(flat)))]
    a, b = flat[chosen, first[chosen]].copy(), flat[chosen, second[chosen]].copy()
    flat[chosen, first[chosen]], flat[chosen, second[chosen]] = b, a
    return flat.reshape(logits.shape)


def test_score_heads_are_read_from_the_graph(tmp_path):
    path = save(tagger(), tmp_path / "tagger.onnx")
    assert score_head_outputs(path) == {"logits"}  # MatMul + bias through an Identity; not the embedding


def test_tag_changes_on_5_percent_of_positions_break_a_1_percent_budget(tmp_path):
    path = save(tagger(), tmp_path / "tagger.onnx")
    tokens = np.random.default_rng(1).integers(0, VOCAB, (64, STEPS)).astype(np.int64)
    evaluator = Evaluator(path, Dataset.bind({"token_ids": tokens}, inspect_model(path).inputs), EngineSettings())
    reference = evaluator.reference_outputs
    changed = {"logits": swap_closest_top_two(reference["logits"], 0.051), "features": reference["features"]}
    fidelity = evaluator.compare_outputs(changed)
    logits = fidelity.outputs["logits"]
    assert logits.kind == "sequence" and not logits.step_scores and logits.score_head
    assert abs((1 - logits.top1_per_step) - 0.051) < 0.002
    assert logits.worst_slice_cosine > 0.98 and logits.worst_sample_cosine > 0.98  # the cosine floors pass
    budget = Budget.from_settings(0.01, EngineSettings())
    verdict = judge(fidelity, budget)
    assert not verdict.ok
    assert verdict.outputs["logits"].metric == BudgetMetric.TOP1_PER_STEP and not verdict.outputs["logits"].ok
    assert verdict.outputs["features"].metric == BudgetMetric.COSINE  # features keep the cosine floors
    # the same change on 0.5% of positions is within the 1% budget
    small = {"logits": swap_closest_top_two(reference["logits"], 0.005), "features": reference["features"]}
    assert judge(evaluator.compare_outputs(small), budget).ok


def test_one_probability_per_sample_is_judged_by_its_largest_change():
    """silero VAD's speech probability: a pooled cosine of 0.999 hid one sample moving by 0.03."""
    reference = np.random.default_rng(2).uniform(0.0, 1.0, (64, 1)).astype(np.float32)
    budget = Budget.from_settings(0.01, EngineSettings())
    moved = reference.copy()
    moved[5] += 0.03
    fidelity = compare({"p": reference}, {"p": moved}, 64, None, False)
    assert fidelity.outputs["p"].cosine > 0.999  # what the pooled figure alone said
    assert abs(fidelity.outputs["p"].worst_value_fidelity - 0.97) < 1e-3
    verdict = judge(fidelity, budget)
    assert not verdict.ok and any("moved by 0.0300" in reason for reason in verdict.reasons)
    nudged = reference.copy()
    nudged[5] += 0.005
    assert judge(compare({"p": reference}, {"p": nudged}, 64, None, False), budget).ok


def test_one_probability_per_step_is_judged_by_its_largest_change():
    """deepcut's word-boundary probability per character ([N, T, 1]): no per-step cosine exists."""
    reference = np.random.default_rng(3).uniform(0.0, 1.0, (16, 40, 1)).astype(np.float32)
    moved = reference.copy()
    moved[3, 17, 0] = np.clip(moved[3, 17, 0] + 0.2, 0.0, 1.2)
    fidelity = compare({"p": reference}, {"p": moved}, 16, None, False)
    assert fidelity.outputs["p"].kind == "sequence" and fidelity.outputs["p"].worst_sample_cosine > 0.98
    assert not judge(fidelity, Budget.from_settings(0.01, EngineSettings())).ok


def test_predicted_ids_are_judged_per_sample_as_well_as_pooled():
    """piper's diacritizer: 0.85% of ids changed overall (within 1%), but 4.2% of one sample's."""
    reference = np.random.default_rng(4).integers(0, 15, (32, 48)).astype(np.int64)
    changed = reference.copy()
    changed[7, :2] = (changed[7, :2] + 1) % 15  # 2 of 48 ids in one sample: 4.2% there, 0.13% overall
    fidelity = compare({"ids": reference}, {"ids": changed}, 32, None, False)
    assert fidelity.outputs["ids"].agreement > 0.99
    verdict = judge(fidelity, Budget.from_settings(0.01, EngineSettings()))
    assert not verdict.ok and any("worst per-sample agreement" in reason for reason in verdict.reasons)


def test_channels_first_anchors_are_judged_per_anchor():
    """A YOLO head [N, 4 + classes, 8400]: a few anchors' boxes moved, every row (channel) barely changed."""
    rng = np.random.default_rng(5)
    reference = np.concatenate([rng.uniform(0, 640, (4, 4, 2000)), rng.uniform(0, 1, (4, 18, 2000))], axis=1).astype(
        np.float32
    )
    moved = reference.copy()
    moved[1, :4, 300] = moved[1, [2, 3, 0, 1], 300]  # one anchor's box coordinates swapped around
    out = compare({"boxes": reference}, {"boxes": moved}, 4, None, False).outputs["boxes"]
    assert out.kind == "sequence" and out.worst_sample_cosine > 0.98
    assert out.worst_slice_cosine < 0.98 and "anchor" in out.slice
