"""`auto`: picks a mode that fits the graph, within budget, by its objective, and never returns a slower model.

Latency figures are noise on a loaded machine: tests that need a verdict force it through settings (a
tolerance no candidate can exceed, a speed-up none can reach) and assert the decision, not the timing.
"""

from __future__ import annotations

import numpy as np
import pytest
from quant_helpers import SETTINGS, bundle, feeds_dataset, matmul_model, run_step, save

from compression.datasets import DatasetBundle
from compression.settings import EngineSettings


@pytest.fixture(scope="module")
def auto_cnn(digits_cnn, tmp_path_factory):
    work = tmp_path_factory.mktemp("auto_cnn")
    return run_step(
        digits_cnn.path, {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.01}, bundle(digits_cnn), work
    )


def test_auto_quantizes_a_convnet_within_budget(auto_cnn):
    """static, dynamic and int8_weights are all about a quarter of the size: which is fastest depends on the CPU
    (int8 Conv kernels gain with VNNI, lose without) and on noise, so any of them may be chosen."""
    result, _ = auto_cnn
    details = result.metrics.steps[0].details
    assert [c["mode"] for c in details["candidates"]] == ["static", "dynamic", "int8_weights", "fp16_weights"]
    assert details["objective"] == "balanced"  # the default
    static = next(c for c in details["candidates"] if c["mode"] == "static")
    assert static["within_budget"] and static["size_ratio"] < 0.5
    assert details["chosen"] in ("static", "dynamic", "int8_weights") and "objective 'balanced'" in details["reason"]
    assert details["size_ratio"] < 0.5
    assert result.metrics.fidelity.accuracy.drop <= 0.01


def test_auto_progress_only_moves_forward(auto_cnn):
    """Every candidate's first attempt, then the searches in another order: each pass has its own progress span."""
    _, recorder = auto_cnn
    values = recorder.progress_values
    assert len(values) > 5 and values == sorted(values)


def test_auto_never_returns_a_slower_model(auto_cnn):
    """Every candidate within budget was timed against the input in one interleaved session set; the chosen
    one's interval is not wholly above the slowdown tolerance, and the metrics carry each ratio's interval."""
    result, _ = auto_cnn
    details = result.metrics.steps[0].details
    timed = [c for c in details["candidates"] if "latency_ratio" in c]
    assert {c["mode"] for c in timed} == {"static", "dynamic", "int8_weights"}
    # int8 weights met the budget: float16 storage (twice the size, the same float compute) is not tried
    fp16_weights = next(c for c in details["candidates"] if c["mode"] == "fp16_weights")
    assert "not tried" in fp16_weights["reasons"][0]
    for candidate in timed:
        low, high = candidate["latency_interval"]
        assert low <= candidate["latency_ratio"] <= high
        assert candidate["latency_verdict"] in ("clearly faster", "within noise", "inconclusive", "clearly slower")
    chosen = next(c for c in timed if c["mode"] == details["chosen"])
    assert chosen["latency_verdict"] != "clearly slower"
    assert details["latency_measurement"]["rounds"] <= SETTINGS.latency.runs
    # the pipeline's final comparison is the pair auto already timed: reused, not measured again
    final = result.metrics
    assert final.latency_measurement["reused"] is True
    assert final.latency_ratio.ratio == pytest.approx(chosen["latency_ratio"])
    assert final.ratios["latency"] == pytest.approx(chosen["latency_ratio"])


def test_auto_picks_dynamic_for_a_transformer(transformer_block, tmp_path):
    result, _ = run_step(
        transformer_block.path, {"type": "quantize", "mode": "auto"}, bundle(transformer_block), tmp_path
    )
    details = result.metrics.steps[0].details
    assert details["chosen"] == "dynamic"
    assert details["latency_verdict"] != "clearly slower" and details["size_ratio"] < 1.0
    assert result.metrics.fidelity.accuracy.drop <= 0.01


def tiny_matmul(tmp_path, k: int = 8):
    rng = np.random.default_rng(0)
    src = save(matmul_model(rng.standard_normal((k, k)).astype(np.float32)), tmp_path / f"mm{k}.onnx")
    return src, DatasetBundle(eval=feeds_dataset({"x": rng.standard_normal((64, k)).astype(np.float32)}, src))


def test_auto_returns_the_input_when_nothing_is_faster(tmp_path):
    """A single 8x8 MatMul: quantizing adds work, so under `latency` auto hands back the input and says so."""
    src, datasets = tiny_matmul(tmp_path)
    step = {"type": "quantize", "mode": "auto", "objective": "latency", "max_accuracy_drop": 0.3}
    result, recorder = run_step(src, step, datasets, tmp_path)
    step = result.metrics.steps[0]
    assert step.changed is False
    assert step.details["input_model_returned"] is True
    assert "no candidate within budget is clearly faster than the input" in step.details["reason"]
    assert step.details["candidates"][0]["latency_verdict"] != "clearly faster"
    assert result.model_path == src  # nothing changed: the input itself, no copy
    assert "returning the input model" in recorder.text()
    assert result.metrics.latency_measurement["stopped"] == "same_model"  # input vs input: ratio 1, timed once
    assert result.metrics.latency_ratio.ratio == 1.0
    # float compute runs the input's kernels: under `latency` the weight-storage modes are not even planned
    assert {c["mode"] for c in step.details["candidates"]} == {"dynamic"}
    assert any("int8_weights and fp16_weights skipped" in note for note in step.details["plan"])


def test_listed_weight_storage_is_never_timed_under_latency(tmp_path):
    """Listed explicitly under `latency`, fp16_weights meets the budget but is not timed or chosen: its kernels
    are the input's, so a "faster" reading could only be noise (CI once read 0.9x and returned it)."""
    src, datasets = tiny_matmul(tmp_path)
    step = {"type": "quantize", "mode": "auto", "objective": "latency", "candidates": ["fp16_weights"], **LOOSE}
    result, _ = run_step(src, step, datasets, tmp_path)
    details = result.metrics.steps[0].details
    assert result.metrics.steps[0].changed is False and details["input_model_returned"] is True
    candidate = details["candidates"][0]
    assert candidate["within_budget"] and "latency_ratio" not in candidate
    assert "never faster" in candidate["reasons"][-1]
    assert "none can be faster" in details["reason"]
    assert "latency_measurement" not in details


def test_balanced_returns_the_input_when_no_candidate_is_smaller(tmp_path):
    """Quantizing an 8x8 MatMul grows the file (scales, zero points, more nodes): nothing to gain."""
    src, datasets = tiny_matmul(tmp_path)
    result, _ = run_step(src, {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.3}, datasets, tmp_path)
    details = result.metrics.steps[0].details
    assert details["input_model_returned"] and "no candidate within budget is smaller" in details["reason"]
    assert "latency_measurement" not in details  # nothing worth timing


# nothing can be clearly slower (tolerance 100x) nor clearly faster (a 100x speed-up needed): latency is noise
LOOSE = {"max_accuracy_drop": 0.3}  # random weights and inputs: these tests are about latency, not the budget
NOISE_ONLY = EngineSettings(latency_runs=40, latency_slowdown_tolerance=100.0, quant_min_speedup=100.0)


@pytest.mark.parametrize(("objective", "chosen"), [("balanced", "dynamic"), ("size", "dynamic"), ("latency", None)])
def test_objective_decides_when_latency_is_within_noise(tmp_path, objective, chosen):
    """A 256x256 MatMul: dynamic int8 is ~0.25x the size. With latency forced to read as noise, `balanced` and
    `size` take the smaller model and `latency` hands back the input."""
    src, datasets = tiny_matmul(tmp_path, 256)
    step = {"type": "quantize", "mode": "auto", "objective": objective, "candidates": ["dynamic"], **LOOSE}
    result, _ = run_step(src, step, datasets, tmp_path, NOISE_ONLY)
    details = result.metrics.steps[0].details
    assert details["objective"] == objective
    assert details.get("chosen") == chosen
    assert details["reason"].startswith(f"objective '{objective}'")
    candidate = details["candidates"][0]
    assert candidate["latency_verdict"] in ("within noise", "inconclusive")
    assert candidate["size_ratio"] < 0.5
    if chosen:
        assert details["size_ratio"] == candidate["size_ratio"] and "smallest" in details["reason"]
        assert result.metrics.output.size_bytes < result.metrics.input.size_bytes / 2
    else:
        assert details["input_model_returned"] and "clearly faster" in details["reason"]


def test_a_capped_measurement_is_inconclusive_and_counts_as_not_worse(tmp_path):
    """Three rounds cannot give a 95% interval: the verdict says inconclusive, and `balanced` treats it as not
    worse (the candidate is returned) while the metrics say the measurement stopped at its cap."""
    src, datasets = tiny_matmul(tmp_path, 256)
    settings = NOISE_ONLY.model_copy(update={"latency": NOISE_ONLY.latency.model_copy(update={"runs": 3})})
    step = {"type": "quantize", "mode": "auto", "candidates": ["dynamic"], **LOOSE}
    result, _ = run_step(src, step, datasets, tmp_path, settings)
    details = result.metrics.steps[0].details
    assert details["latency_measurement"] == {**details["latency_measurement"], "rounds": 3, "conclusive": False}
    assert details["latency_measurement"]["stopped"] == "max_rounds"
    assert details["candidates"][0]["latency_verdict"] == "inconclusive"
    assert details["candidates"][0]["latency_interval_confidence"] < 0.95
    assert details["chosen"] == "dynamic" and "inconclusive" in details["reason"]
    assert result.metrics.latency_ratio.conclusive is False


def test_the_wall_time_cap_stops_the_measurement(tmp_path):
    src, datasets = tiny_matmul(tmp_path, 256)
    settings = EngineSettings(latency_max_seconds=1e-6)
    step = {"type": "quantize", "mode": "auto", "candidates": ["dynamic"], **LOOSE}
    result, _ = run_step(src, step, datasets, tmp_path, settings)
    measurement = result.metrics.steps[0].details["latency_measurement"]
    assert measurement["stopped"] == "max_time" and measurement["rounds"] == 1 and not measurement["conclusive"]


def test_auto_returns_the_input_when_the_budget_cannot_be_met(tmp_path):
    """Weights with a huge outlier in every MatMul and a zero budget: nothing quantized passes."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    weight[0, :] = 1e4
    src = save(matmul_model(weight), tmp_path / "outlier.onnx")
    x = rng.standard_normal((256, 64)).astype(np.float32)
    x[:, 0] = 1e-4
    datasets = DatasetBundle(eval=feeds_dataset({"x": x}, src))
    # dynamic only (the plan before weight storage): float16 storage holds these weights to ~5e-4 and passes,
    # and int8_weights passes too with the outlier MatMul's weight in float16 (kept_out_of_int8)
    step = {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.0, "candidates": ["dynamic"]}
    result, _ = run_step(src, step, datasets, tmp_path)
    step = result.metrics.steps[0]
    assert step.details["input_model_returned"] is True
    assert result.metrics.fidelity.top1_agreement == 1.0


def test_explicit_mode_speed_guard_returns_the_input_when_slower(tmp_path):
    """The guard rejects a model whose whole latency interval is above the tolerance. Forced: a tolerance of
    0.5x makes the dynamic 8x8 MatMul (about as fast as its input, or slower) clearly slower."""
    src, datasets = tiny_matmul(tmp_path)
    settings = EngineSettings(latency_runs=40, latency_slowdown_tolerance=0.5)
    result, _ = run_step(src, {"type": "quantize", "mode": "dynamic"}, datasets, tmp_path, settings)
    details = result.metrics.steps[0].details
    assert details["latency_interval"][0] > 0.5 and details["latency_verdict"] == "clearly slower"
    assert details["input_model_returned"] and "clearly slower" in details["reason"]


def test_explicit_mode_with_objective_latency_needs_a_clear_gain(tmp_path):
    src, datasets = tiny_matmul(tmp_path, 256)
    step = {"type": "quantize", "mode": "dynamic", "objective": "latency"}
    result, _ = run_step(src, step, datasets, tmp_path, NOISE_ONLY)
    details = result.metrics.steps[0].details
    assert details["input_model_returned"] and "not clearly faster" in details["reason"]
    balanced, _ = run_step(src, {"type": "quantize", "mode": "dynamic"}, datasets, tmp_path / "b", NOISE_ONLY)
    assert balanced.metrics.steps[0].changed  # the default objective keeps a model that is not slower


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
    assert [c["mode"] for c in details["candidates"]] == ["dynamic", "weight_only", "int8_weights", "fp16_weights"]
    assert any("large MatMul" in note for note in details["plan"])
    if not details["input_model_returned"]:
        chosen = next(c for c in details["candidates"] if c["mode"] == details["chosen"])
        assert chosen["latency_verdict"] != "clearly slower" and chosen["size_ratio"] < 1.0


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
    assert details.get("chosen") in (None, "dynamic", "int8_weights")
    assert "quantizer failed" in recorder.text()
