"""`auto`: picks a mode that fits the graph, within budget, and never returns a slower model."""

from __future__ import annotations

import numpy as np
import pytest
from quant_helpers import bundle, feeds_dataset, matmul_model, run_step, save

from compression.datasets import DatasetBundle


@pytest.fixture(scope="module")
def auto_cnn(digits_cnn, tmp_path_factory):
    work = tmp_path_factory.mktemp("auto_cnn")
    return run_step(
        digits_cnn.path, {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.01}, bundle(digits_cnn), work
    )


def test_auto_picks_static_for_a_convnet_within_budget(auto_cnn):
    result, _ = auto_cnn
    details = result.metrics.steps[0].details
    assert [c["mode"] for c in details["candidates"]] == ["static", "dynamic"]
    assert details["chosen"] == "static"
    assert result.metrics.fidelity.accuracy.drop <= 0.01


def test_auto_never_returns_a_slower_model(auto_cnn):
    """The chosen candidate was timed in the same interleaved run as the input and beat it."""
    details = auto_cnn[0].metrics.steps[0].details
    chosen = next(c for c in details["candidates"] if c["mode"] == details["chosen"])
    assert chosen["latency_ms"] < details["input_latency_ms"]
    assert details["latency_ratio_confirmed"] < 1.0  # re-measured in a longer interleaved run
    assert all(c["latency_ms"] >= chosen["latency_ms"] for c in details["candidates"] if "latency_ms" in c)


def test_auto_picks_dynamic_for_a_transformer(transformer_block, tmp_path):
    result, _ = run_step(
        transformer_block.path, {"type": "quantize", "mode": "auto"}, bundle(transformer_block), tmp_path
    )
    details = result.metrics.steps[0].details
    assert details["chosen"] == "dynamic"
    assert details["latency_ratio"] < 1.0
    assert result.metrics.fidelity.accuracy.drop <= 0.01


def test_auto_returns_the_input_when_nothing_is_faster(tmp_path):
    """A single 8x8 MatMul: quantizing adds work, so auto hands back the input and says so."""
    rng = np.random.default_rng(0)
    src = save(matmul_model(rng.standard_normal((8, 8)).astype(np.float32)), tmp_path / "tiny.onnx")
    datasets = DatasetBundle(eval=feeds_dataset({"x": rng.standard_normal((64, 8)).astype(np.float32)}, src))
    step = {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.3}  # loose: this test is about speed
    result, recorder = run_step(src, step, datasets, tmp_path)
    step = result.metrics.steps[0]
    assert step.changed is False
    assert step.details["input_model_returned"] is True
    assert "faster than the input" in step.details["reason"]
    assert result.model_path == src  # nothing changed: the input itself, no copy
    assert "returning the input model" in recorder.text()


def test_auto_returns_the_input_when_the_budget_cannot_be_met(tmp_path):
    """Weights with a huge outlier in every MatMul and a zero budget: nothing quantized passes."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    weight[0, :] = 1e4
    src = save(matmul_model(weight), tmp_path / "outlier.onnx")
    x = rng.standard_normal((256, 64)).astype(np.float32)
    x[:, 0] = 1e-4
    datasets = DatasetBundle(eval=feeds_dataset({"x": x}, src))
    result, _ = run_step(src, {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.0}, datasets, tmp_path)
    step = result.metrics.steps[0]
    assert step.details["input_model_returned"] is True
    assert result.metrics.fidelity.top1_agreement == 1.0


def test_explicit_mode_speed_guard_returns_the_input_when_slower(tmp_path):
    """Quantizing one 8x8 MatMul only adds DynamicQuantizeLinear work: the guard hands back the input."""
    rng = np.random.default_rng(0)
    src = save(matmul_model(rng.standard_normal((8, 8)).astype(np.float32)), tmp_path / "tiny.onnx")
    datasets = DatasetBundle(eval=feeds_dataset({"x": rng.standard_normal((64, 8)).astype(np.float32)}, src))
    result, _ = run_step(src, {"type": "quantize", "mode": "dynamic"}, datasets, tmp_path)
    details = result.metrics.steps[0].details
    assert details["latency_ratio"] > 1.05
    assert details["input_model_returned"] and "slower" in details["reason"]


def test_rejected_attempts_are_deleted(auto_cnn):
    result, _ = auto_cnn
    left = sorted(p.name for p in result.model_path.parent.glob("step0_*.onnx"))
    assert left == [result.model_path.name]


def test_auto_tries_weight_only_for_large_matmuls(tmp_path):
    rng = np.random.default_rng(2)
    src = save(matmul_model((rng.standard_normal((512, 256)) * 0.05).astype(np.float32)), tmp_path / "big.onnx")
    datasets = DatasetBundle(eval=feeds_dataset({"x": rng.standard_normal((64, 512)).astype(np.float32)}, src))
    result, _ = run_step(src, {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.05}, datasets, tmp_path)
    details = result.metrics.steps[0].details
    assert [c["mode"] for c in details["candidates"]] == ["dynamic", "weight_only"]
    assert any("large MatMul" in note for note in details["plan"])
    if not details["input_model_returned"]:
        chosen = next(c for c in details["candidates"] if c["mode"] == details["chosen"])
        assert chosen["latency_ms"] < details["input_latency_ms"]


def test_a_crashing_candidate_does_not_sink_auto(digits_cnn, tmp_path, monkeypatch):
    """onnxruntime's quantizers raise bare exceptions on graphs they cannot handle; simulate one."""
    from compression.quantization import modes

    def crash(self, prepared, dst, exclude):
        raise RuntimeError("unsupported pattern")

    monkeypatch.setattr(modes.StaticQuantizer, "quantize", crash)
    monkeypatch.setattr(modes.StaticQuantizer, "tune", lambda self, prepared, evaluator: None)
    result, recorder = run_step(digits_cnn.path, {"type": "quantize", "mode": "auto"}, bundle(digits_cnn), tmp_path)
    details = result.metrics.steps[0].details
    static = next(c for c in details["candidates"] if c["mode"] == "static")
    assert not static["within_budget"] and "unsupported pattern" in static["reasons"][0]
    assert details.get("chosen") in (None, "dynamic")
    assert "quantizer failed" in recorder.text()
