"""The budget judged per output with a metric that fits it, and the objective's choice among candidates."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from quant_helpers import feeds_dataset, run_step, save

from compression.datasets import DatasetBundle
from compression.metrics.fidelity import compare
from compression.metrics.latency import RatioInterval
from compression.quantization.budget import Budget, BudgetMetric, BudgetMetricError, judge
from compression.quantization.config import Objective
from compression.quantization.objective import Option, choose
from compression.quantization.speed import SpeedVerdict
from compression.settings import EngineSettings

RNG = np.random.default_rng(0)
SETTINGS = EngineSettings()


def budget(drop: float | None = 0.01, metric=None) -> Budget:
    return Budget.from_settings(drop, SETTINGS, metric)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def outputs() -> dict[str, np.ndarray]:
    return {
        "scores": RNG.standard_normal((32, 10)).astype(np.float32),
        "steps": softmax(RNG.standard_normal((32, 20, 30)) * 3),
        "features": RNG.standard_normal((32, 20, 8)).astype(np.float32),
        "map": RNG.uniform(0.1, 1, (32, 1, 32, 32)).astype(np.float32),
        "ids": RNG.integers(0, 9, (32, 20)),
    }


def test_each_output_gets_the_metric_of_its_kind_and_says_why() -> None:
    ref = outputs()
    verdict = judge(compare(ref, ref, 32, None, False), budget())
    metrics = {name: judged.metric for name, judged in verdict.outputs.items()}
    assert metrics == {
        "scores": BudgetMetric.TOP1,
        "steps": BudgetMetric.TOP1_PER_STEP,
        "features": BudgetMetric.COSINE,
        "map": BudgetMetric.COSINE,
        "ids": BudgetMetric.AGREEMENT,
    }
    assert "probability distributions" in verdict.outputs["steps"].why
    assert verdict.ok and verdict.drop == 0.0


def test_labels_make_the_scored_output_an_accuracy_budget() -> None:
    ref = outputs()
    labels = ref["scores"].argmax(1)
    verdict = judge(compare(ref, ref, 32, labels, False), budget())
    assert verdict.outputs["scores"].metric == BudgetMetric.ACCURACY
    assert verdict.outputs["steps"].metric == BudgetMetric.TOP1_PER_STEP


def test_a_collapsed_time_step_fails_although_the_pooled_cosine_passes() -> None:
    """The recognizer case: whole-tensor cosine 0.99+, one time step wrong."""
    ref = {"steps": outputs()["steps"]}
    out = {"steps": ref["steps"].copy()}
    out["steps"][5, 3] = np.roll(out["steps"][5, 3], 7)
    fidelity = compare(ref, out, 32, None, False)
    assert fidelity.outputs["steps"].cosine > 0.99
    verdict = judge(fidelity, budget(drop=0.5))  # a loose rate: the worst-case floors still hold
    assert not verdict.ok and verdict.collapsed_outputs == ["steps"]
    assert any("worst per-step cosine" in reason for reason in verdict.reasons)
    assert judge(fidelity, budget(drop=None)).ok  # "floors only": pooled, collapse of the whole output


def test_a_rate_budget_counts_changed_steps() -> None:
    ref = {"steps": outputs()["steps"]}
    out = {"steps": ref["steps"].copy()}
    flips = [(n, t) for n in range(32) for t in range(0, 20, 10)]  # 64 of 640 steps flip their top-1
    for n, t in flips:
        row = out["steps"][n, t]
        top, second = np.argsort(row)[-1], np.argsort(row)[-2]
        row[top], row[second] = row[second], row[top]
    loose = Budget.from_settings(0.01, SETTINGS.model_copy(update={"quantize": SETTINGS.quantize.model_copy(
        update={"min_slice_cosine": 0.0, "min_output_cosine": 0.0})}))  # fmt: skip
    verdict = judge(compare(ref, out, 32, None, False), loose)
    assert not verdict.ok and verdict.metric == "top1_per_step" and verdict.drop == pytest.approx(0.1)


def test_budget_metric_overrides_per_output_and_for_all() -> None:
    ref = outputs()
    fidelity = compare(ref, ref, 32, None, False)
    per_output = judge(fidelity, budget(metric={"scores": BudgetMetric.SNR_DB, "steps": BudgetMetric.COSINE}))
    assert per_output.outputs["scores"].metric == BudgetMetric.SNR_DB
    assert per_output.outputs["steps"].metric == BudgetMetric.COSINE
    assert per_output.outputs["scores"].why == "set by budget_metric"
    assert per_output.outputs["map"].metric == BudgetMetric.COSINE  # not named: chosen from its kind
    for_all = judge(fidelity, budget(metric=BudgetMetric.TOP1))
    assert for_all.outputs["scores"].metric == BudgetMetric.TOP1
    assert for_all.outputs["map"].metric == BudgetMetric.COSINE
    assert "does not fit a dense_map output" in for_all.outputs["map"].why


def test_snr_budget() -> None:
    ref = {"y": RNG.standard_normal((16, 64)).astype(np.float32)}
    noisy = {"y": ref["y"] + 0.05 * RNG.standard_normal((16, 64)).astype(np.float32)}  # ~26 dB
    fidelity = compare(ref, noisy, 16, None, False)
    assert judge(fidelity, budget(metric=BudgetMetric.SNR_DB)).ok
    strict = Budget.from_settings(0.01, SETTINGS, BudgetMetric.SNR_DB).model_copy(update={"min_snr_db": 40.0})
    verdict = judge(fidelity, strict)
    assert not verdict.ok and "SNR" in verdict.reasons[0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"nope": BudgetMetric.COSINE}, "outputs the model does not have"),
        ({"map": BudgetMetric.TOP1}, "does not fit output 'map'"),
        ({"scores": BudgetMetric.TOP1_PER_STEP}, "does not fit output 'scores'"),
        (BudgetMetric.ACCURACY, "needs an eval dataset with integer 'labels'"),
    ],
)
def test_a_budget_metric_that_cannot_apply_is_a_clear_error(spec, message) -> None:
    ref = outputs()
    with pytest.raises(BudgetMetricError, match=message):
        budget(metric=spec).check_outputs(compare(ref, ref, 32, None, False))


def interval(ratio: float, low: float, high: float, conclusive: bool = True) -> RatioInterval:
    return RatioInterval(ratio=ratio, low=low, high=high, confidence=0.95, rounds=50, conclusive=conclusive)


def option(mode: str, size: float, verdict: SpeedVerdict, ratio: float) -> Option:
    return Option(mode, size, interval(ratio, ratio - 0.02, ratio + 0.02), verdict)


STATIC = option("static", 0.27, SpeedVerdict.FASTER, 0.4)
DYNAMIC = option("dynamic", 0.26, SpeedVerdict.WITHIN_NOISE, 1.0)
WEIGHT_ONLY = option("weight_only", 0.15, SpeedVerdict.INCONCLUSIVE, 1.03)
SLOW_TINY = option("fp16", 0.05, SpeedVerdict.SLOWER, 1.5)


def test_balanced_takes_the_smallest_not_worse_and_breaks_near_ties_by_speed() -> None:
    assert choose(Objective.BALANCED, [STATIC, DYNAMIC], 0.1).option is STATIC  # 0.27 vs 0.26: a tie
    assert choose(Objective.BALANCED, [STATIC, DYNAMIC], 0.0).option is DYNAMIC
    picked = choose(Objective.BALANCED, [STATIC, DYNAMIC, WEIGHT_ONLY], 0.1)
    assert picked.option is WEIGHT_ONLY and "inconclusive latency, counted as not worse" in picked.reason


def test_size_takes_the_smallest_not_clearly_slower() -> None:
    assert choose(Objective.SIZE, [STATIC, DYNAMIC], 0.1).option is DYNAMIC


def test_latency_takes_the_fastest_clearly_faster() -> None:
    assert choose(Objective.LATENCY, [STATIC, DYNAMIC, WEIGHT_ONLY], 0.1).option is STATIC
    none = choose(Objective.LATENCY, [DYNAMIC, WEIGHT_ONLY], 0.1)
    assert none.option is None and "inconclusive" in none.reason


@pytest.mark.parametrize("objective", list(Objective))
def test_no_objective_returns_a_clearly_slower_model(objective) -> None:
    choice = choose(objective, [SLOW_TINY], 0.1)
    assert choice.option is None and "returning the input model" in choice.reason


def two_output_model() -> onnx.ModelProto:
    w1 = helper.make_tensor("W1", TensorProto.FLOAT, (64, 10), RNG.standard_normal(640).tolist())
    w2 = helper.make_tensor("W2", TensorProto.FLOAT, (64, 64), RNG.standard_normal(4096).tolist())
    shape = helper.make_tensor("shape", TensorProto.INT64, (3,), [-1, 8, 8])
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["scores"], name="head"),
        helper.make_node("MatMul", ["x", "W2"], ["flat"], name="body"),
        helper.make_node("Reshape", ["flat", "shape"], ["seq"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["N", 8, 8]),
        ],
        [w1, w2, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_step_records_each_outputs_metric_and_why(tmp_path) -> None:
    src = save(two_output_model(), tmp_path / "two.onnx")
    datasets = DatasetBundle(eval=feeds_dataset({"x": RNG.standard_normal((64, 64)).astype(np.float32)}, src))
    step = {"type": "quantize", "mode": "dynamic", "max_accuracy_drop": 0.5, "budget_metric": {"scores": "snr_db"}}
    result, _ = run_step(src, step, datasets, tmp_path, EngineSettings(latency_runs=5))
    judged = result.metrics.steps[0].details["budget_metrics"]
    assert judged["scores"]["metric"] == "snr_db" and judged["scores"]["why"] == "set by budget_metric"
    # a MatMul reshaped to [T, C] is a linear head: its steps are scores, judged by their argmax per step
    assert judged["seq"]["metric"] == "top1_per_step" and "sequence" in judged["seq"]["why"]
    fidelity = result.metrics.fidelity
    assert fidelity.worst_sample_cosine is not None and fidelity.worst_slice_cosine is not None


def test_a_budget_metric_naming_no_output_fails_the_job_with_the_names(tmp_path) -> None:
    src = save(two_output_model(), tmp_path / "two.onnx")
    datasets = DatasetBundle(eval=feeds_dataset({"x": RNG.standard_normal((16, 64)).astype(np.float32)}, src))
    step = {"type": "quantize", "mode": "auto", "budget_metric": {"logits": "top1"}}
    with pytest.raises(BudgetMetricError, match=r"its outputs are \['scores', 'seq'\]"):
        run_step(src, step, datasets, tmp_path)
