"""The shared latency measurement: adaptive interleaved rounds, a bounded cap, intervals, no pair timed twice.

No assertion here depends on how fast anything runs: caps are forced through settings and the figures
checked are structural (interval contains its estimate, rounds within the cap, reuse).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compression.datasets import Dataset
from compression.metrics.evaluation import Evaluator
from compression.metrics.latency import StopReason, compare_latency, measure_latency, median_interval
from compression.metrics.latency_cache import LatencyCache
from compression.model_info import inspect_model
from compression.settings import EngineSettings, LatencySettings


def relu_model(path: Path, width: int = 16, extra_nodes: int = 0) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["h0"])]
    for i in range(extra_nodes):
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("Identity", [f"h{extra_nodes}"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    feed = {"x": np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)}
    return relu_model(tmp_path / "a.onnx"), relu_model(tmp_path / "b.onnx", extra_nodes=3), feed


def test_median_interval_is_distribution_free_and_honest_about_few_rounds() -> None:
    ratios = [1.0 + 0.01 * i for i in range(-10, 11)]  # 21 values around 1.0
    median, low, high, coverage = median_interval(ratios, 0.95)
    assert median == pytest.approx(1.0) and low < 1.0 < high and coverage >= 0.95
    assert sorted(ratios).index(low) == len(ratios) - 1 - sorted(ratios).index(high)  # symmetric order statistics
    _, low3, high3, coverage3 = median_interval([0.9, 1.0, 1.1], 0.95)
    assert (low3, high3) == (0.9, 1.1) and coverage3 == pytest.approx(0.75)  # [min, max] of 3 covers only 75%
    _, narrow_low, narrow_high, _ = median_interval([1.0] * 50 + [5.0] * 3, 0.95)
    assert narrow_low == narrow_high == 1.0  # a few spoiled rounds do not widen it


def test_rounds_stop_within_the_round_cap(models) -> None:
    a, b, feed = models
    settings = LatencySettings(runs=12, min_rounds=3, min_seconds=0, warmup=1)
    result = compare_latency([a, b], feed, settings, batch_size=4)
    assert 3 <= result.rounds <= 12
    assert [s.runs for s in result.models] == [result.rounds] * 2
    assert len(result.models[0].samples_ms) == result.rounds  # the per-run samples the report charts
    interval = result.ratios[0]
    assert interval.low <= interval.ratio <= interval.high and interval.rounds == result.rounds
    assert result.stopped in (StopReason.CONVERGED, StopReason.MAX_ROUNDS)
    assert result.conclusive == (result.stopped == StopReason.CONVERGED)


def test_the_wall_time_cap_bounds_the_measurement(models) -> None:
    """However slow the machine, a comparison ends at the first round after `max_seconds` (sessions included)."""
    a, b, feed = models
    settings = LatencySettings(runs=1_000_000, min_rounds=1_000_000, max_seconds=0.3, warmup=2)
    started = time.perf_counter()
    result = compare_latency([a, b], feed, settings, batch_size=4)
    assert time.perf_counter() - started < 10.0  # 0.3 s cap plus one round: generous for a loaded machine
    assert result.stopped == StopReason.MAX_TIME and 1 <= result.rounds < 1_000_000
    assert result.models[0].runs == result.rounds


def test_a_decided_interval_needs_no_more_rounds(models) -> None:
    """With thresholds far outside any plausible ratio, the first check decides every interval."""
    a, b, feed = models
    settings = LatencySettings(runs=500, min_rounds=10, min_seconds=0, target_half_width=1e-9)
    result = compare_latency([a, b], feed, settings, batch_size=4, decide_at=(1e-6, 1e6))
    assert result.stopped == StopReason.CONVERGED and result.rounds == 10 and result.conclusive
    undecided = compare_latency([a, b], feed, settings.model_copy(update={"runs": 20}), batch_size=4)
    assert undecided.stopped == StopReason.MAX_ROUNDS and not undecided.conclusive  # 1e-9 is never narrow enough


def test_cancellation_is_checked_during_a_long_measurement(models) -> None:
    a, b, feed = models
    calls = []
    settings = LatencySettings(runs=1_000_000, min_rounds=1_000_000, max_seconds=2.5, warmup=0)
    compare_latency([a, b], feed, settings, batch_size=4, check=lambda: calls.append(1))
    assert len(calls) >= 2  # at the start and about once a second


def test_fixed_round_measurement_for_benches(models) -> None:
    a, b, feed = models
    stats = measure_latency([a, b], feed, runs=7, warmup=1, threads=1, batch_size=4)
    assert [s.runs for s in stats] == [7, 7]


def test_a_pair_is_timed_once_even_after_a_move(models, tmp_path: Path) -> None:
    a, b, feed = models
    cache = LatencyCache()
    settings = LatencySettings(runs=5, min_rounds=3, min_seconds=0, warmup=0)
    first = cache.compare([a, b], feed, settings, 4)
    assert not first.reused and first.wall_time_s > 0
    moved = b.rename(tmp_path / "moved.onnx")  # a step's output moved from its scratch dir: same content
    again = cache.compare([a, moved], feed, settings, 4)
    assert again.reused and again.wall_time_s == 0.0 and again.ratios == first.ratios
    relu_model(moved, extra_nodes=5)  # rewritten: a different model now
    assert not cache.compare([a, moved], feed, settings, 4).reused
    other_feed = {"x": feed["x"] * 2}
    assert not cache.compare([a, moved], other_feed, settings, 4).reused


def test_a_model_against_itself_is_ratio_one_timed_once(models) -> None:
    a, _, feed = models
    cache = LatencyCache()
    settings = LatencySettings(runs=5, min_rounds=3, min_seconds=0, warmup=0)
    result = cache.compare([a, a], feed, settings, 4)
    assert result.stopped == StopReason.SAME_MODEL and result.ratios[0].ratio == 1.0 and result.conclusive
    assert result.models[0] == result.models[1] and result.models[0].runs == 3
    assert cache.compare([a, a], feed, settings, 4).reused


def test_candidates_measured_together_are_reused_one_by_one(models, tmp_path: Path) -> None:
    """`auto` times every candidate against the input in one session set; a later pair comes from it."""
    a, b, feed = models
    c = relu_model(tmp_path / "c.onnx", extra_nodes=1)
    dataset = Dataset.bind({"x": np.repeat(feed["x"], 8, axis=0)}, inspect_model(a).inputs)
    evaluator = Evaluator(a, dataset, EngineSettings(latency_runs=6, latency_min_rounds=3, latency_min_seconds=0))
    together = evaluator.compare_latency([a, b, c])
    assert len(together.ratios) == 2 and not together.reused
    alone = evaluator.compare_latency([a, c])
    assert alone.reused and alone.ratios[0] == together.ratios[1]
    assert evaluator.latency([a, b])[1] == together.models[1]  # the per-model API reads the same measurement
