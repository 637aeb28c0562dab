"""The real-model bench's independent judge: worst-case figures per sample and per slice, and its latency CI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from bench.judge import (
    compare_latency,
    cosine,
    judge_models,
    judge_outputs,
    slice_cosines,
    tile_cosines,
)
from model_zoo.third_party import OutputJudging, OutputKind


def test_one_bad_time_step_shows_per_slice_not_pooled() -> None:
    rng = np.random.default_rng(0)
    ref = rng.random((1, 40, 100)).astype(np.float32)
    out = ref.copy()
    out[0, 7] = rng.random(100)  # one step replaced
    assert cosine(ref, out) > 0.97
    assert slice_cosines(ref, out, axis=1).min() < 0.9
    verdict = judge_outputs(["scores"], [OutputJudging(OutputKind.STEP_SCORES, 1)], [[ref]], [[out]])
    assert verdict.worst_slice is not None and verdict.worst_slice < 0.9 and verdict.worst_sample > 0.97
    assert not verdict.clean(0.98, 0.99)


def test_slices_tiny_in_both_models_are_skipped_but_new_detections_are_not() -> None:
    ref = np.zeros((1, 6, 10), dtype=np.float32)
    ref[0, 0] = 1.0
    out = ref.copy()
    out[0, 3] = 1e-5 * np.arange(10)  # background noise, far below the floor
    assert slice_cosines(ref, out, axis=1).min() == pytest.approx(1.0)
    out[0, 4, 2] = 0.8  # a detection that was not there
    assert slice_cosines(ref, out, axis=1).min() == pytest.approx(0.0)


def test_dense_map_tiles_find_a_damaged_region() -> None:
    rng = np.random.default_rng(1)
    ref = rng.random((1, 1, 128, 128)).astype(np.float32)
    out = ref.copy()
    out[..., :32, :32] = rng.random((32, 32))
    assert tile_cosines(ref, out).min() < 0.9 < cosine(ref, out)


def test_probabilities_ids_and_top1() -> None:
    probs = np.array([0.1, 0.9, 0.5], dtype=np.float32)
    ids = np.array([[1, 2, 3, 4]], dtype=np.uint8)
    scores = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    flipped = np.array([[0.4, 0.3, 0.3]], dtype=np.float32)
    verdict = judge_outputs(
        ["p", "ids", "cls"],
        [
            OutputJudging(OutputKind.PROBABILITIES, 0),
            OutputJudging(OutputKind.IDS),
            OutputJudging(OutputKind.CLASS_SCORES),
        ],
        [[probs, ids, scores], [probs, ids, scores]],
        [[probs + np.array([0.0, -0.05, 0.0], dtype=np.float32), ids, scores], [probs, ids * 0 + 1, flipped]],
    )
    p, i, c = verdict.outputs
    assert p.worst_slice == pytest.approx(0.95, abs=1e-6)
    assert i.worst_sample == pytest.approx(0.25)
    assert c.top1 == pytest.approx(0.5)
    assert verdict.n_feeds == 2


def test_shape_change_is_a_failed_output() -> None:
    verdict = judge_outputs(["y"], [OutputJudging(OutputKind.STATE)], [[np.ones((2, 3))]], [[np.ones((3, 2))]])
    assert verdict.worst_sample == 0.0


def _matmul_model(path: Path, scale: float) -> Path:
    weights = (scale * np.eye(64)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 64])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    return path


def test_judge_models_and_latency_interval(tmp_path: Path) -> None:
    a = _matmul_model(tmp_path / "a.onnx", 1.0)
    b = _matmul_model(tmp_path / "b.onnx", 2.0)  # same direction, twice the magnitude
    feeds = [{"x": np.random.default_rng(i).random((1, 64), dtype=np.float32)} for i in range(3)]
    verdict = judge_models(a, b, feeds, [OutputJudging(OutputKind.STEP_FEATURES, 0)])
    assert verdict.worst_sample == pytest.approx(1.0) and verdict.worst_slice == pytest.approx(1.0)
    latency = compare_latency(a, a, feeds[0], budget_s=2.0, min_rounds=12, max_rounds=60)
    assert latency.rounds >= 12 and latency.low <= latency.ratio <= latency.high
    assert 0.2 < latency.ratio < 5.0  # the same model against itself: wide margins for a loaded machine
