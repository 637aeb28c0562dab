"""Work `auto` no longer does on small models: timing candidates that cannot be chosen, transformer-fusion timing
of a dominated dynamic, information-only rankings of candidates that cannot be chosen, the step fidelity of a
model the search already judged; and the real-model bench comparing in-process times with in-process times."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from quant_helpers import bundle, feeds_dataset, matmul_model, run_step, save

import compression.quantization.auto as auto
import compression.quantization.fusion as fusion
from bench.real_models import ModelResult, Status
from compression.contract import PassContext
from compression.datasets import DatasetBundle
from compression.metrics.evaluation import Evaluator
from compression.metrics.latency import LatencyComparison, LatencyStats, RatioInterval, StopReason
from compression.quantization.auto import first_attempt_order, later_needed, timing_plan
from compression.quantization.config import (
    DynamicQuantizeConfig,
    Fp16WeightsQuantizeConfig,
    Int8WeightsQuantizeConfig,
    Objective,
    StaticQuantizeConfig,
)
from compression.quantization.modes import make_quantizer
from compression.settings import EngineSettings

BALANCED, SIZE, LATENCY = Objective.BALANCED, Objective.SIZE, Objective.LATENCY


def test_weight_storage_candidates_make_their_first_attempts_right_after_static():
    configs = [
        StaticQuantizeConfig(mode="static"),
        DynamicQuantizeConfig(mode="dynamic"),
        Int8WeightsQuantizeConfig(mode="int8_weights"),
        Fp16WeightsQuantizeConfig(mode="fp16_weights"),
    ]
    order = [(index, config.mode) for index, config in first_attempt_order(configs, storage_early=True)]
    assert order == [(0, "static"), (2, "int8_weights"), (3, "fp16_weights"), (1, "dynamic")]
    assert [config.mode for _, config in first_attempt_order(configs[1:], storage_early=True)] == [
        "int8_weights",
        "fp16_weights",
        "dynamic",
    ]
    assert first_attempt_order(configs, storage_early=False) == list(enumerate(configs))  # no fusion to skip


def test_storage_goes_early_only_when_dynamic_tunes_a_transformer_fusion(transformer_block, digits_cnn, tmp_path):
    ctx = PassContext(work_dir=tmp_path, original_model=transformer_block.path, datasets=DatasetBundle())
    dynamic = [DynamicQuantizeConfig(mode="dynamic"), Int8WeightsQuantizeConfig(mode="int8_weights")]
    assert auto._fusion_will_be_tuned(transformer_block.path, dynamic, ctx)
    assert not auto._fusion_will_be_tuned(digits_cnn.path, dynamic, ctx)  # a convnet: nothing to fuse
    assert not auto._fusion_will_be_tuned(transformer_block.path, dynamic[1:], ctx)  # no dynamic planned


def test_only_candidates_within_the_size_tie_of_the_smallest_are_timed_first():
    sizes = {"dynamic": 0.40, "int8_weights": 0.38, "fp16_weights": 0.55, "static": 0.30}
    now, later = timing_plan(sizes, BALANCED, 0.1)
    assert now == ["static"] and sorted(later) == ["dynamic", "fp16_weights", "int8_weights"]
    now, later = timing_plan({"a": 0.40, "b": 0.43, "c": 0.60}, BALANCED, 0.1)
    assert now == ["a", "b"] and later == ["c"]  # 0.43 <= 0.44: tied with the smallest
    assert timing_plan({"a": 0.40, "b": 0.40, "c": 0.41}, SIZE, 0.1) == (["a", "b"], ["c"])
    assert timing_plan(sizes, LATENCY, 0.1) == (list(sizes), [])  # the fastest wins: every one is timed


def test_the_rest_is_timed_when_the_smallest_turns_out_clearly_slower():
    sizes = {"a": 0.30, "b": 0.31, "c": 0.50, "d": 0.60}
    assert not later_needed(sizes, ["c", "d"], ["b"], BALANCED, 0.1)  # b not slower: c and d lie outside its tie
    assert later_needed(sizes, ["c", "d"], [], BALANCED, 0.1)  # a and b clearly slower: c may be chosen
    assert later_needed({"a": 0.30, "c": 0.50}, ["c"], [], SIZE, 0.1)
    assert not later_needed(sizes, [], [], BALANCED, 0.1)


def _comparison(ratios: list[float]) -> LatencyComparison:
    stats = LatencyStats(median_ms=1.0, p90_ms=1.0, mean_ms=1.0, runs=20, threads=1, batch_size=1)
    intervals = [
        RatioInterval(ratio=r, low=r * 0.98, high=r * 1.02, confidence=0.95, rounds=20, conclusive=True) for r in ratios
    ]
    return LatencyComparison(
        models=[stats] * (len(ratios) + 1), ratios=intervals, rounds=20, wall_time_s=0.1, stopped=StopReason.CONVERGED
    )


def _matmul_job(tmp_path: Path) -> tuple[Path, DatasetBundle]:
    rng = np.random.default_rng(5)
    src = save(matmul_model((rng.standard_normal((512, 256)) * 0.05).astype(np.float32)), tmp_path / "mm.onnx")
    return src, DatasetBundle(eval=feeds_dataset({"x": rng.standard_normal((64, 512)).astype(np.float32)}, src))


def _auto(candidates: list[str]) -> dict:
    return {"type": "quantize", "mode": "auto", "max_accuracy_drop": 0.05, "candidates": candidates}


@pytest.mark.parametrize("smallest_slower", [False, True])
def test_auto_times_a_larger_candidate_only_when_the_smaller_one_is_clearly_slower(
    tmp_path, monkeypatch, smallest_slower
):
    """dynamic (int8 weights) is about half fp16_weights' size: fp16_weights cannot be chosen unless dynamic is
    clearly slower; then it is timed in a second measurement and chosen."""
    src, datasets = _matmul_job(tmp_path)
    timed: list[int] = []

    def fake(model_path, paths, *args, **kwargs):
        timed.append(len(paths))
        ratio = 1.5 if smallest_slower and len(timed) == 1 else 1.0
        return _comparison([ratio] * len(paths))

    monkeypatch.setattr(auto, "measure_candidates", fake)
    result, _ = run_step(src, _auto(["dynamic", "fp16_weights"]), datasets, tmp_path / "run")
    details = result.metrics.steps[0].details
    fp16 = next(row for row in details["candidates"] if row["mode"] == "fp16_weights")
    if smallest_slower:
        assert timed == [1, 1] and details["latency_second_measurement"]
        assert details["chosen"] == "fp16_weights" and "latency_ratio" in fp16
    else:
        assert timed == [1] and details["latency_timed"] == ["dynamic"]
        assert details["chosen"] == "dynamic" and "latency_ratio" not in fp16
        assert any(reason.startswith("not timed: more than quant_size_tie larger") for reason in fp16["reasons"])


def test_a_met_candidate_that_cannot_be_chosen_gets_no_information_ranking(tmp_path, monkeypatch):
    """Both candidates meet the budget at once; the one `_met_but_cannot_be_chosen` rules out is not ranked (its
    ranking is information only), the other still is."""
    src, datasets = _matmul_job(tmp_path)
    monkeypatch.setattr(
        auto,
        "_met_but_cannot_be_chosen",
        lambda search, *_: "forced" if search.quantizer.config.mode == "fp16_weights" else "",
    )
    result, _ = run_step(src, _auto(["dynamic", "fp16_weights"]), datasets, tmp_path / "run")
    details = result.metrics.steps[0].details
    rows = {row["mode"]: row for row in details["candidates"]}
    assert rows["fp16_weights"]["within_budget"] and rows["dynamic"]["within_budget"]
    assert rows["fp16_weights"]["cannot_be_chosen"] == "forced"
    assert "sensitivity" not in rows["fp16_weights"]["timings"] and not rows["fp16_weights"]["sensitivity"]
    assert rows["dynamic"]["timings"]["sensitivity"]["calls"] == 1  # not ruled out: ranked as before


def test_met_but_cannot_be_chosen_needs_a_clearly_smaller_storage_candidate():
    def search(mode: str, ok: bool, size: int) -> SimpleNamespace:
        return SimpleNamespace(
            first_ok=ok, first_bytes=size, quantizer=SimpleNamespace(config=SimpleNamespace(mode=mode))
        )

    dynamic, int8 = search("dynamic", True, 1000), search("int8_weights", True, 800)
    assert "int8_weights met the budget at once at 0.80x" in auto._met_but_cannot_be_chosen(
        dynamic, [dynamic, int8], BALANCED, 0.1
    )
    assert not auto._met_but_cannot_be_chosen(dynamic, [dynamic, search("int8_weights", True, 950)], BALANCED, 0.1)
    assert not auto._met_but_cannot_be_chosen(dynamic, [dynamic, search("static", True, 100)], BALANCED, 0.1)
    assert not auto._met_but_cannot_be_chosen(dynamic, [dynamic, int8], LATENCY, 0.1)
    assert not auto._met_but_cannot_be_chosen(search("dynamic", False, 1000), [int8], BALANCED, 0.1)


def _fusion_quantizer(model, tmp_path: Path, max_drop: float):
    ctx = PassContext(work_dir=tmp_path, original_model=model.path, datasets=bundle(model, eval_limit=64))
    config = DynamicQuantizeConfig(mode="dynamic", max_accuracy_drop=max_drop, speed_guard=False)
    quantizer = make_quantizer(config, ctx, tmp_path / "q")
    return quantizer, quantizer.prepare(model.path), Evaluator(model.path, ctx.datasets.eval, EngineSettings())


def test_fusion_variants_are_not_timed_when_none_met_the_budget_and_none_can_be_chosen(
    transformer_block, tmp_path, monkeypatch
):
    def no_timing(*args, **kwargs):
        raise AssertionError("timed")

    monkeypatch.setattr(fusion, "interleaved_latency", no_timing)
    quantizer, prepared, evaluator = _fusion_quantizer(transformer_block, tmp_path, 1e-9)  # nothing meets it
    quantizer.cannot_be_chosen = lambda size: "forced"
    before = prepared.path
    quantizer.tune(prepared, evaluator)
    details = quantizer.details["transformer_fusion"]
    assert details["chosen"] == "unfused" and not details["applied"] and prepared.path == before
    assert "forced" in details["not_timed"]
    assert all(row["latency_ms"] is None and row["within_budget"] is False for row in details["variants"].values())


def test_fusion_variants_are_timed_when_one_could_be_chosen(transformer_block, tmp_path, monkeypatch):
    calls: list[int] = []

    def counted(paths, evaluator, settings):
        calls.append(len(paths))
        return [LatencyStats(median_ms=1.0, p90_ms=1.0, mean_ms=1.0, runs=3, threads=1, batch_size=1)] * len(paths)

    monkeypatch.setattr(fusion, "interleaved_latency", counted)
    quantizer, prepared, evaluator = _fusion_quantizer(transformer_block, tmp_path, 1e-9)
    quantizer.cannot_be_chosen = lambda size: ""  # a first attempt of that size could still be chosen
    quantizer.tune(prepared, evaluator)
    assert calls and calls[0] >= 2 and "not_timed" not in quantizer.details["transformer_fusion"]


def test_the_step_fidelity_of_a_judged_model_is_remembered(tmp_path):
    src, datasets = _matmul_job(tmp_path)
    assert datasets.eval is not None
    evaluator = Evaluator(src, datasets.eval, EngineSettings())
    first = evaluator.fidelity(src)
    moved = shutil.copyfile(src, tmp_path / "moved.onnx")  # the step's output is the attempt's file, moved
    again = evaluator.fidelity(moved)
    assert evaluator.fidelity_computed == 1 and again == first and again is not first
    other = save(matmul_model(np.ones((512, 256), np.float32)), tmp_path / "other.onnx")
    evaluator.fidelity(other)
    assert evaluator.fidelity_computed == 2


def test_the_pipeline_does_not_run_the_returned_model_again(tmp_path, monkeypatch):
    src, datasets = _matmul_job(tmp_path)
    runs: list[Path] = []
    original = Evaluator.outputs

    def counting(self, path):
        runs.append(Path(path))
        return original(self, path)

    monkeypatch.setattr(Evaluator, "outputs", counting)
    step = {"type": "quantize", "mode": "dynamic", "max_accuracy_drop": 0.05, "speed_guard": False}
    result, _ = run_step(src, step, datasets, tmp_path / "run")
    assert result.metrics.steps[0].changed and result.metrics.steps[0].fidelity is not None
    assert result.model_path not in runs  # judged in the search under its scratch name, then remembered
    assert len(runs) == 2  # the reference outputs and the one attempt


def test_the_bench_compares_in_process_times():
    """job/ref is run_pipeline's in-process time over the reference's in-process time, not the process wall time
    (which also counts .npz loading, the interpreter's exit and the parent's polling)."""
    result = ModelResult("m", Status.CLEAN, wall_s=10.0, job_s=6.0, ref_s=2.0)
    assert result.wall_per_ref == pytest.approx(3.0) and result.within_3x_ref
    assert ModelResult("old", Status.CLEAN, wall_s=10.0, ref_s=2.0).wall_per_ref == pytest.approx(5.0)
