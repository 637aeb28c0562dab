"""auto's search order after the first attempts: cheapest first, but near ties in cost decided by the budget."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from compression.quantization.auto import search_order
from compression.quantization.budget import BudgetMetric, OutputJudgement, Verdict


@dataclass
class FakeSearch:
    name: str
    first_attempt_s: float
    first_miss: float
    first_ok: bool = False


def _order(*searches: FakeSearch) -> list[str]:
    return [s.name for s in search_order(list(searches))]  # type: ignore[arg-type]


def test_near_ties_in_cost_go_closest_to_the_budget_first():
    """silero_vad: dynamic and int8_weights first attempts take 0.07-0.28 s each, whichever is cheaper by a
    hair used to search first; now the one that missed the budget by less does, however the load falls."""
    dynamic = FakeSearch("dynamic", 0.10, first_miss=40.0)
    int8_weights = FakeSearch("int8_weights", 0.12, first_miss=3.0)
    assert _order(dynamic, int8_weights) == ["int8_weights", "dynamic"]
    assert _order(FakeSearch("dynamic", 0.12, 40.0), FakeSearch("int8_weights", 0.10, 3.0)) == [
        "int8_weights",
        "dynamic",
    ]


def test_clearly_cheaper_searches_still_go_first_and_met_ones_last():
    static = FakeSearch("static", 9.0, first_miss=1.5)
    dynamic = FakeSearch("dynamic", 1.0, first_miss=30.0)
    met = FakeSearch("fp16_weights", 0.1, first_miss=0.2, first_ok=True)
    assert _order(static, met, dynamic) == ["dynamic", "static", "fp16_weights"]


def test_equal_costs_and_misses_keep_plan_order():
    a, b = FakeSearch("static", 1.0, 2.0), FakeSearch("dynamic", 1.0, 2.0)
    assert _order(a, b) == ["static", "dynamic"]


def _judged(metric: BudgetMetric, value: float, threshold: float) -> OutputJudgement:
    return OutputJudgement(metric=metric, why="test", value=value, threshold=threshold, ok=False)


def test_verdict_miss_is_the_worst_output_in_units_of_its_allowance():
    verdict = Verdict(
        ok=False,
        outputs={
            "scores": _judged(BudgetMetric.TOP1, 0.03, 0.01),  # 3x the allowed drop
            "map": _judged(BudgetMetric.COSINE, 0.95, 0.99),  # 0.05 from 1 where 0.01 is allowed: 5x
        },
    )
    assert verdict.miss() == pytest.approx(5.0)
    assert Verdict(ok=True, outputs={"y": _judged(BudgetMetric.TOP1, 0.0, 0.01)}).miss() == 0.0
    snr = Verdict(ok=False, outputs={"audio": _judged(BudgetMetric.SNR_DB, 10.0, 20.0)})
    assert snr.miss() == pytest.approx(2.0)
