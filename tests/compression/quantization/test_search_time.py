"""The search's time bound (quant_search_time_factor) and its phase timings: behaviour, not timing figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper
from quant_helpers import feeds_dataset, run_step, save

from compression.contract import PassContext
from compression.datasets import DatasetBundle
from compression.quantization.budget import step_budget
from compression.quantization.config import DynamicQuantizeConfig
from compression.quantization.modes import make_quantizer
from compression.quantization.search import BudgetSearch
from compression.quantization.timing import SearchClock
from compression.settings import EngineSettings

RNG = np.random.default_rng(3)


def _mlp_with_one_outlier(path: Path, layers: int = 4) -> Path:
    """`layers` MatMuls; the first has one huge weight, so per-tensor int8 zeroes the rest of it."""
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = RNG.standard_normal((16, 16)).astype(np.float32) * 0.3
        if i == 0:
            w[0, 0] = 300.0
        inits.append(helper.make_tensor(f"W{i}", TensorProto.FLOAT, w.shape, w.ravel()))
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"h{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes[-1] = helper.make_node("Identity", [f"h{layers - 1}"], ["y"], name="out")
    graph = helper.make_graph(
        nodes,
        "outlier_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        inits,
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _data(src: Path) -> DatasetBundle:
    x = RNG.standard_normal((200, 16)).astype(np.float32)
    x[:, 0] *= 1e-3  # the outlier weight meets a tiny input: it sets the int8 scale but not the output
    return DatasetBundle(eval=feeds_dataset({"x": x}, src))


class ExpiresAfterAttempts(SearchClock):
    """A clock that expires once the search has made `attempts` attempts (no dependence on real time)."""

    def __init__(self, attempts: int) -> None:
        super().__init__(1.0)
        self.after = attempts
        self.search: BudgetSearch | None = None

    def expired(self) -> bool:
        return self.search is not None and self.search.attempts >= self.after


def test_a_search_cut_by_time_returns_its_within_budget_attempt_and_says_what_it_skipped(tmp_path):
    src = _mlp_with_one_outlier(tmp_path / "m.onnx")
    settings = EngineSettings(quant_exclusion_rounds=2, latency_runs=5)  # 4 nodes: groups of 2, then bisection
    ctx = PassContext(work_dir=tmp_path / "w", original_model=src, datasets=_data(src), settings=settings)
    evaluator = ctx.reference()
    config = DynamicQuantizeConfig(mode="dynamic", max_accuracy_drop=0.01, budget_metric="cosine", speed_guard=False)
    budget = step_budget(config.max_accuracy_drop, config.budget_metric, settings, evaluator)
    # attempt 1 collapses the output, attempt 2 (its producer float) still fails, attempt 3 (+ the 2 most
    # sensitive nodes float) passes: the bisection after it is cut
    clock = ExpiresAfterAttempts(3)
    search = BudgetSearch(make_quantizer(config, ctx, tmp_path / "q"), ctx, evaluator, budget, "t", clock=clock)
    clock.search = search
    result = search.run(src)
    assert result.ok and result.best.path is not None and result.best.verdict.ok
    assert [entry["ok"] for entry in result.history] == [False, False, True]
    assert result.best.excluded == result.history[-1]["kept_float"] and "fc0" in result.best.excluded
    assert clock.cut is not None and clock.cut["mode"] == "dynamic" and "bisect" in clock.cut["would_try_next"]
    assert clock.summary()["cut_by_time"] is True
    timings = result.summary()["timings"]
    assert {"prepare", "attempt_quantize", "attempt_evaluate", "sensitivity"} <= set(timings)
    assert timings["attempt_quantize"]["calls"] == 3
    assert all("quantize_s" in entry and "evaluate_s" in entry for entry in result.history)


def test_auto_cut_by_time_gives_every_candidate_its_first_attempt_and_reports_the_cut(tmp_path):
    src = _mlp_with_one_outlier(tmp_path / "m.onnx", layers=2)
    step = {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.05, "budget_metric": "cosine"}
    step["candidates"] = ["dynamic", "weight_only"]
    settings = EngineSettings(
        quant_search_time_factor=1e-9, quant_search_time_min_s=0, latency_runs=5
    )  # expired right after the unit
    result, _ = run_step(src, step, _data(src), tmp_path / "run", settings)
    details = result.metrics.steps[0].details
    search_time = details["search_time"]
    assert search_time["cut_by_time"] is True and search_time["unit_s"] > 0
    rows = {row["mode"]: row for row in details["candidates"]}
    assert set(rows) == {"dynamic", "weight_only"}
    assert all(row["quantization_attempts"] == 1 for row in rows.values())  # the first attempt, nothing more
    if result.metrics.steps[0].changed:  # whatever was returned met the budget
        assert rows[details["chosen"]]["within_budget"]
    else:
        assert not any(row["within_budget"] for row in rows.values())


def test_no_bound_tries_every_candidate(tmp_path):
    src = _mlp_with_one_outlier(tmp_path / "m.onnx", layers=2)
    step = {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.05, "budget_metric": "cosine"}
    step["candidates"] = ["dynamic", "fp16"]
    settings = EngineSettings(quant_search_time_factor=None, latency_runs=5)
    result, _ = run_step(src, step, _data(src), tmp_path / "run", settings)
    details = result.metrics.steps[0].details
    assert details["search_time"]["cut_by_time"] is False
    assert {row["mode"] for row in details["candidates"]} == {"dynamic", "fp16"}


def test_auto_continues_the_searches_that_need_attempts_before_those_met_at_once(tmp_path):
    src = _mlp_with_one_outlier(tmp_path / "m.onnx", layers=2)
    step = {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.01, "budget_metric": "cosine"}
    step["candidates"] = ["fp16", "dynamic"]  # fp16 meets the budget at once, dynamic does not (the outlier)
    settings = EngineSettings(quant_search_time_factor=None, latency_runs=5)
    result, _ = run_step(src, step, _data(src), tmp_path / "run", settings)
    details = result.metrics.steps[0].details
    rows = {row["mode"]: row for row in details["candidates"]}
    assert rows["fp16"]["quantization_attempts"] == 1 and rows["dynamic"]["quantization_attempts"] > 1
    assert details["search_time"]["search_order"] == ["dynamic", "fp16"]
    assert [row["mode"] for row in details["candidates"]] == ["fp16", "dynamic"]  # the table keeps plan order
