"""Distillation's batches follow the memory settings: inference runs (teacher labels, selection checks, the guard)
eval_activation_memory_mb, training forwards distill_activation_memory_mb (a step split into smaller forwards)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compression.datasets import Dataset
from compression.metrics.inference import make_session
from compression.settings import EngineSettings
from compression.training.config import DistillConfig
from compression.training.distiller import Distiller, QuietHooks
from compression.training.teacher import teacher_targets
from tests.compression.wide_cnn import wide_cnn, wide_data


def test_teacher_labels_and_checks_run_in_batches_that_fit_the_memory_setting(tmp_path: Path) -> None:
    teacher = wide_cnn(tmp_path / "teacher.onnx")
    student = wide_cnn(tmp_path / "student.onnx", scale=0.9)
    train, selection = wide_data(24, 1), wide_data(8, 2)
    step = DistillConfig.model_validate({"epochs": 1, "batch_size": 4, "auto_hints": 0, "augment": 0})
    settings = EngineSettings(eval_activation_memory_mb=16)  # ~4 MB of activations per sample: 4 per batch at most
    distiller = Distiller(teacher, student, train, selection, step, settings, QuietHooks())
    assert 1 <= distiller.run_batch <= 4 < settings.evaluation.batch_size
    whole = make_session(teacher).run(None, {"x": train.arrays["x"]})[0]  # one batch of all 24 samples
    np.testing.assert_allclose(distiller.train.targets["y"], whole, rtol=1e-5, atol=1e-6)
    outcome = distiller.run()
    assert outcome.history and np.isfinite(outcome.history[-1].eval_loss)
    roomy = EngineSettings(eval_activation_memory_mb=4096)  # room for a full batch: the configured one is kept
    assert Distiller(teacher, student, train, selection, step, roomy, QuietHooks()).run_batch == 256


def test_a_training_step_too_large_for_memory_runs_as_smaller_forwards(tmp_path: Path, monkeypatch) -> None:
    teacher = wide_cnn(tmp_path / "teacher.onnx")
    student = wide_cnn(tmp_path / "student.onnx", scale=0.9)
    step = DistillConfig.model_validate({"epochs": 1, "batch_size": 8, "auto_hints": 0, "augment": 0})
    settings = EngineSettings(distill_activation_memory_mb=16)  # 3 x ~4 MB per sample: 1 sample per forward
    distiller = Distiller(teacher, student, wide_data(24, 1), wide_data(8, 2), step, settings, QuietHooks())
    assert distiller.micro_batch == 1 and distiller.run_batch > 1
    sizes: list[int] = []
    forward = distiller.forward

    def counted(inputs):  # noqa: ANN001, ANN202
        if distiller.module.training:
            sizes.append(int(inputs["x"].shape[0]))
        return forward(inputs)

    monkeypatch.setattr(distiller, "forward", counted)
    outcome = distiller.run()
    assert sizes and max(sizes) == 1 and sum(sizes) == 24  # every sample trained, one per forward
    assert outcome.history[-1].epoch == 1
    roomy = Distiller(teacher, student, wide_data(24, 1), wide_data(8, 2), step, EngineSettings(), QuietHooks())
    assert roomy.micro_batch == 8  # the step's batch when it fits


def _length_by_batch(path: Path) -> Path:
    """y = x[:, :k] with k = the batch's largest value (1..8): like a decoder Loop, the output's length depends on
    the whole batch."""
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["k"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["k", "one"], ["end"]),
        helper.make_node("Slice", ["x", "zero", "end", "one"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ragged",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])],
        [
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_outputs_whose_length_differs_between_batches_are_labelled_in_one_run(tmp_path: Path) -> None:
    """Batches sized by memory gave a decoder's outputs other lengths per batch (slanet_plus: 44 and 36 steps);
    the set is then labelled in one run, as it was before, instead of failing to concatenate."""
    model = _length_by_batch(tmp_path / "ragged.onnx")
    x = np.full((6, 8), 2.0, np.float32)
    x[4, 0] = 5.0  # the third batch of two is longer
    data = Dataset(arrays={"x": x}, labels=None, layout="batched")
    targets = teacher_targets(model, data, [], threads=1, batch_size=2, max_bytes=1 << 20)
    assert targets["y"].shape == (6, 5)
    np.testing.assert_array_equal(targets["y"], make_session(model).run(None, {"x": x})[0])
