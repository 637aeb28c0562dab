"""Structured pruning times its result against its input and retries channel multiples when it is slower."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import numpy_helper

from compression.contract import PassContext
from compression.datasets import DatasetBundle
from compression.metrics.latency import RatioInterval
from compression.passes.prune import PrunePass, StructuredPruneConfig
from compression.pruning.speed import choose
from compression.settings import EngineSettings


def conv_widths(path: Path) -> list[int]:
    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [weights[node.input[1]].shape[0] for node in model.graph.node if node.op_type == "Conv"]


def run(digits_cnn, tmp_path: Path, settings: EngineSettings, **config):
    ctx = PassContext(work_dir=tmp_path, original_model=digits_cnn.path, datasets=DatasetBundle(), settings=settings)
    cfg = StructuredPruneConfig(method="structured", sparsity=0.25, **config)
    return PrunePass(cfg).run(digits_cnn.path, ctx), ctx


def test_slower_result_retries_channel_multiples(digits_cnn, tmp_path: Path) -> None:
    always_slower = EngineSettings(latency_slowdown_tolerance=1e-6, latency_runs=5, latency_warmup=1)
    result, _ = run(digits_cnn, tmp_path, always_slower)
    metrics = result.metrics
    assert metrics["round_to_tried"] == [1, 8, 16]
    chosen = metrics["round_to_used"]
    assert all(width % chosen == 0 for width in conv_widths(result.model_path))
    assert metrics["latency_ratio"] > 0
    onnx.checker.check_model(str(result.model_path))
    ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])


def test_speed_check_off_or_round_to_pinned_keeps_the_request(digits_cnn, tmp_path: Path) -> None:
    always_slower = EngineSettings(latency_slowdown_tolerance=1e-6, latency_runs=5, latency_warmup=1)
    off, _ = run(digits_cnn, tmp_path / "off", always_slower, speed_check=False)
    assert "latency_ratio" not in off.metrics and conv_widths(off.model_path) == [12, 24]
    pinned, _ = run(digits_cnn, tmp_path / "pinned", always_slower, round_to=4)
    assert "round_to_tried" not in pinned.metrics and pinned.metrics["latency_ratio"] > 0


def test_the_verdict_is_the_interval_and_reported(digits_cnn, tmp_path: Path) -> None:
    never_slower = EngineSettings(latency_slowdown_tolerance=1e6, latency_runs=5, latency_warmup=1)
    result, _ = run(digits_cnn, tmp_path, never_slower)
    metrics = result.metrics
    assert "round_to_tried" not in metrics and metrics["latency_verdict"] != "clearly slower"
    low, high = metrics["latency_interval"]
    assert low <= metrics["latency_ratio"] <= high and metrics["speed_check_s"] >= 0


def test_speed_check_budget_skips_the_retries(digits_cnn, tmp_path: Path) -> None:
    # always slower, but a budget below one measurement's minimum: timed once, no channel multiples tried
    settings = EngineSettings(latency_slowdown_tolerance=1e-6, latency_runs=5, latency_warmup=1,
                              prune_speed_check_seconds=1.0)  # fmt: skip
    result, _ = run(digits_cnn, tmp_path, settings)
    assert result.metrics["round_to_tried"] == [1] and "round_to_used" not in result.metrics
    assert result.metrics["latency_verdict"] == "clearly slower" and conv_widths(result.model_path) == [12, 24]


def _interval(ratio: float, low: float, high: float) -> RatioInterval:
    return RatioInterval(ratio=ratio, low=low, high=high, confidence=0.95, rounds=20, conclusive=True)


def test_a_retry_replaces_the_request_only_when_clearly_faster() -> None:
    settings = EngineSettings()  # tolerance 1.05
    slower = (1, _interval(1.3, 1.2, 1.4))
    assert choose([slower, (8, _interval(0.9, 0.8, 1.0)), (16, _interval(0.95, 0.9, 1.0))], settings)[0] == 8
    # every option clearly slower: the request stays unless another is clearly below it
    assert choose([slower, (8, _interval(1.25, 1.15, 1.35))], settings)[0] == 1
    assert choose([slower, (8, _interval(1.1, 1.08, 1.15))], settings)[0] == 8
    within = (1, _interval(1.0, 0.9, 1.1))
    assert choose([within, (8, _interval(0.97, 0.92, 1.02))], settings)[0] == 1
