"""The search's give-back pass: nodes kept float without need are quantized again while the budget holds."""

from __future__ import annotations

import numpy as np
from quant_helpers import feeds_dataset, save
from test_weight_storage import two_matmuls

from compression.contract import PassContext
from compression.datasets import DatasetBundle
from compression.quantization.budget import Verdict, step_budget
from compression.quantization.config import Int8WeightsQuantizeConfig
from compression.quantization.modes import make_quantizer
from compression.quantization.search import Attempt, BudgetSearch
from compression.quantization.sensitivity import NodeSensitivity
from compression.settings import EngineSettings


def test_give_back_quantizes_again_the_nodes_the_search_kept_float_without_need(tmp_path, monkeypatch):
    """Eight ranked nodes, the budget holds iff n0 and n5 stay float: groups of 4 and the bisection keep n0..n5
    float; the give-back pass returns n1..n4 to int8 (least sensitive first, in halves) and keeps n0 and n5."""
    nodes = [f"n{i}" for i in range(8)]
    path = save(two_matmuls(), tmp_path / "two.onnx")
    datasets = DatasetBundle(eval=feeds_dataset({"x": np.ones((4, 64), np.float32)}, path))
    settings = EngineSettings(quant_exclusion_rounds=2, quant_give_back_attempts=6)
    ctx = PassContext(work_dir=tmp_path / "w", original_model=path, datasets=datasets, settings=settings)
    evaluator = ctx.reference()
    config = Int8WeightsQuantizeConfig(mode="int8_weights", max_accuracy_drop=0.01, speed_guard=False)
    budget = step_budget(config.max_accuracy_drop, None, settings, evaluator)
    search = BudgetSearch(make_quantizer(config, ctx, tmp_path / "q"), ctx, evaluator, budget, "t")

    def attempt(self, prepared, exclude):
        self.attempts += 1
        ok = {"n0", "n5"} <= set(exclude)
        return Attempt(path, None, Verdict(ok=ok, reasons=[] if ok else ["needs n0 and n5"]), list(exclude))

    ranking = [
        NodeSensitivity(node=n, op_type="MatMul", error=1.0 - i / 8, local_error=1.0 - i / 8)
        for i, n in enumerate(nodes)
    ]
    monkeypatch.setattr(BudgetSearch, "_attempt", attempt)
    monkeypatch.setattr(BudgetSearch, "_rank", lambda self, prepared, quantized, candidates: ranking)
    monkeypatch.setattr(type(search.quantizer), "candidate_nodes", lambda self, prepared: nodes)
    result = search.run(path)
    assert result.ok
    assert sorted(result.best.excluded) == ["n0", "n5"]
    assert result.given_back == ["n1", "n2", "n3", "n4"]
    assert result.summary()["given_back"] == ["n1", "n2", "n3", "n4"]
