"""What static's first attempt no longer pays for: the Conv-layout timing (done once, on the returned attempt),
range refinement and bias correction past their activation volume caps, a repeated failing preprocess."""

from __future__ import annotations

import shutil

import onnx
from quant_helpers import bundle, run_step
from test_quant_bias_correction import corrected_case
from test_static_speed import _fake_latency

import compression.quantization.modes as modes
import compression.quantization.preprocess as preprocess_module
import compression.quantization.search as search_module
import compression.quantization.static_variants as static_variants
from compression.quantization.activation_ranges import refine_ranges
from compression.quantization.bias_correction import BiasCorrector
from compression.quantization.budget import Verdict
from compression.settings import EngineSettings

STATIC = {"type": "quantize", "mode": "static", "speed_guard": False}


def _count_layout_tunes(monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real = static_variants.tune_conv_layout

    def counted(quantizer, prepared, evaluator, baseline, exclude):
        calls.append(list(exclude))
        return real(quantizer, prepared, evaluator, baseline, exclude)

    monkeypatch.setattr(modes, "tune_conv_layout", counted)
    monkeypatch.setattr(static_variants, "interleaved_latency", _fake_latency("int8_padded"))
    return calls


def test_layouts_are_timed_once_on_the_returned_attempt(digits_cnn, tmp_path, monkeypatch):
    calls = _count_layout_tunes(monkeypatch)
    result, _ = run_step(digits_cnn.path, STATIC, bundle(digits_cnn), tmp_path)
    details = result.metrics.steps[0].details
    assert len(calls) == 1 and calls[0] == details["nodes_kept_float"]
    assert details["conv_layout"]["chosen"] == "int8_padded" and details["within_budget"]
    history = details["attempt_history"]
    assert len(history) >= 2 and history[0]["kept_float"] == history[-1]["kept_float"]  # int8, then padded
    assert details["timings"]["tune_returned"]["calls"] == 1
    assert "tune" not in details["timings"] or details["timings"]["tune"]["seconds"] < 5  # nothing quantized


def test_no_layout_timing_without_a_within_budget_attempt(digits_cnn, tmp_path, monkeypatch):
    calls = _count_layout_tunes(monkeypatch)
    settings = EngineSettings(quant_min_output_cosine=1.0, quant_exclusion_rounds=1, quant_give_back_attempts=0)
    result, _ = run_step(digits_cnn.path, STATIC, bundle(digits_cnn), tmp_path, settings)
    assert not result.metrics.steps[0].details["within_budget"]
    assert calls == []


def test_range_refinement_stops_at_its_activation_volume_cap(digits_cnn, tmp_path):
    data = bundle(digits_cnn).calibration.take(16)
    capped = refine_ranges(tmp_path / "a.json", digits_cnn.path, data, 4, 1, tmp_path / "a", max_bytes=1)
    full = refine_ranges(tmp_path / "b.json", digits_cnn.path, data, 4, 1, tmp_path / "b")
    assert capped is not None and full is not None
    assert capped.samples == 4 and capped.capped  # one batch at least
    assert full.samples == 16 and not full.capped


def test_bias_correction_is_not_run_when_two_samples_pass_its_cap(tmp_path):
    src, quantized, corrected, calibration, _ = corrected_case(tmp_path, with_bias=True)
    report = BiasCorrector(calibration, 128, 1, tmp_path / "bc", max_bytes=1).apply(src, corrected)
    assert report.not_run and "quant_bias_correction_activation_mb" in report.not_run
    assert report.nodes_corrected == 0 and not report.kept
    assert corrected.read_bytes() == quantized.read_bytes()
    roomy = BiasCorrector(calibration, 128, 1, tmp_path / "bc2", max_bytes=2**30).apply(src, corrected)
    assert roomy.not_run is None and roomy.samples == 128 and roomy.nodes_corrected == 1


def test_static_step_reports_the_caps(digits_cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(static_variants, "interleaved_latency", _fake_latency("int8"))
    settings = EngineSettings(quant_range_refinement_activation_mb=1, quant_bias_correction_activation_mb=1)
    result, _ = run_step(digits_cnn.path, STATIC, bundle(digits_cnn), tmp_path, settings)
    details = result.metrics.steps[0].details
    ranges = details["activation_ranges"]
    assert ranges["capped"] and 1 <= ranges["samples"] < 256
    assert "not_run" in details["bias_correction"]  # the field is always reported (None: it ran)


def test_failed_symbolic_shape_inference_is_not_repeated(tmp_path, monkeypatch, digits_cnn):
    seen: list[bool] = []

    def failing_symbolic(src, dst, skip_optimization, skip_symbolic_shape):
        seen.append(skip_symbolic_shape)
        if not skip_symbolic_shape:
            raise RuntimeError("symbolic shape inference failed")
        shutil.copyfile(src, dst)

    monkeypatch.setattr(preprocess_module, "quant_pre_process", failing_symbolic)
    monkeypatch.setattr(preprocess_module, "_RESULTS", preprocess_module.OrderedDict())
    monkeypatch.setattr(preprocess_module, "_SYMBOLIC_FAILED", preprocess_module.OrderedDict())
    source = tmp_path / "m.onnx"
    shutil.copyfile(digits_cnn.path, source)
    first = preprocess_module.preprocess(source, tmp_path / "a" / "pre.onnx", lambda message: None)
    assert seen == [False, True] and first.is_file()
    preprocess_module._RESULTS.clear()  # the result is gone: the remembered failure still skips the first try
    preprocess_module.preprocess(source, tmp_path / "b" / "pre.onnx", lambda message: None)
    assert seen == [False, True, True]
    third = preprocess_module.preprocess(source, tmp_path / "c" / "pre.onnx", lambda message: None)
    assert seen == [False, True, True] and third.read_bytes() == first.read_bytes()  # copied


def test_a_faster_layout_that_breaks_the_budget_is_not_returned(digits_cnn, tmp_path, monkeypatch):
    """The re-quantized faster layout is judged like any attempt: failing it, the int8 attempt is returned."""
    monkeypatch.setattr(static_variants, "interleaved_latency", _fake_latency("int8_padded"))
    real_judge = search_module.judge
    judged: list[int] = []

    def judge_failing_second(fidelity, budget):
        judged.append(1)
        if len(judged) == 2:
            return Verdict(ok=False, reasons=["made to fail here"])
        return real_judge(fidelity, budget)

    monkeypatch.setattr(search_module, "judge", judge_failing_second)
    result, _ = run_step(digits_cnn.path, STATIC, bundle(digits_cnn), tmp_path)
    details = result.metrics.steps[0].details
    layout = details["conv_layout"]
    assert layout["chosen"] == "int8" and layout["fastest"] == "int8_padded"
    assert layout["rejected"] == ["made to fail here"]
    assert details["within_budget"] and details["conv_channels_padded"] == []
    assert not [node for node in onnx.load(str(result.model_path)).graph.node if node.op_type == "Pad"]
