"""Selection checks inside an epoch, the pull toward the starting weights (L2-SP) and fresh mixed copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from compression.datasets import Dataset
from compression.settings import EngineSettings
from compression.training import distiller as distiller_module
from compression.training.config import DistillConfig
from compression.training.distiller import Distiller, QuietHooks

SETTINGS = EngineSettings()


def _mlp(path: Path, w1: np.ndarray, w2: np.ndarray) -> Path:
    """y = relu(x @ w1) @ w2, x [N, 8], y [N, 4] (a regression output: MSE against the teacher)."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],  # fmt: skip
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.5, (8, 16)).astype(np.float32), rng.normal(0, 0.5, (16, 4)).astype(np.float32)
    teacher = _mlp(tmp_path / "teacher.onnx", w1, w2)
    noisy = (
        (w1 + rng.normal(0, 0.5, w1.shape)).astype(np.float32),
        (w2 + rng.normal(0, 0.5, w2.shape)).astype(np.float32),
    )
    return teacher, _mlp(tmp_path / "student.onnx", *noisy)


def _data(n: int, seed: int) -> Dataset:
    x = np.random.default_rng(seed).normal(0, 1, (n, 8)).astype(np.float32)
    return Dataset(arrays={"x": x}, labels=None, layout="batched")


def _distiller(pair: tuple[Path, Path], **config: object) -> Distiller:
    step = DistillConfig.model_validate({"epochs": 2, "batch_size": 4, "auto_hints": 0, "augment": 0, **config})
    return Distiller(pair[0], pair[1], _data(40, 1), _data(10, 2), step, SETTINGS, QuietHooks())


def _weights(distiller: Distiller) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in distiller.module.parameters()])


def test_checks_inside_an_epoch_keep_the_best_state(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distiller_module, "CHECK_COST_RATIO", 0.0)  # no spacing by the checks' own cost
    distiller = _distiller(pair, lr=0.05, check_seconds=1e-6)  # a check after every step
    outcome = distiller.run()
    steps_per_epoch = 10
    assert outcome.steps == 2 * steps_per_epoch
    assert len(outcome.checks) == outcome.steps + 1  # the input's, then one per step (epoch ends not repeated)
    assert any(c.step % steps_per_epoch for c in outcome.checks)  # checks between epoch ends
    best = min(outcome.checks, key=lambda c: c.eval_loss)
    assert (outcome.best_step, outcome.best_epoch) == (best.step, best.epoch)
    # the module holds the best check's weights (not the last step's): it scores that check's loss again
    assert distiller.evaluate().loss == pytest.approx(best.eval_loss, rel=1e-5)


def test_without_a_budget_or_interval_only_epoch_ends_are_checked(pair: tuple[Path, Path]) -> None:
    outcome = _distiller(pair, lr=0.01).run()
    assert [c.step for c in outcome.checks] == [0, 10, 20]
    assert len(outcome.history) == 3


def test_a_run_that_stops_improving_goes_back_to_its_best_state_with_a_lower_rate(pair: tuple[Path, Path]) -> None:
    events: list[str] = []

    class Hooks(QuietHooks):
        def event(self, message: str, **data: object) -> None:
            events.append(message)

    step = DistillConfig.model_validate({"epochs": 8, "batch_size": 4, "auto_hints": 0, "augment": 0, "lr": 1.0})
    outcome = Distiller(pair[0], pair[1], _data(40, 1), _data(10, 2), step, SETTINGS, Hooks()).run()
    # lr 1 wrecks the student at once: no epoch-end check is better; the third (3 of 8 epochs) backs off
    assert 1 <= len(outcome.backoffs) <= 2 and outcome.backoffs[0] == 30, outcome.backoffs
    assert events.count("distill: back to the best state, lower learning rate") == len(outcome.backoffs)
    never = _distiller(pair, epochs=5, lr=1.0, backoff=0).run()
    assert never.backoffs == []


def test_anchor_keeps_the_weights_near_their_start(pair: tuple[Path, Path]) -> None:
    moved = {}
    for anchor in (0.0, 50.0):
        distiller = _distiller(pair, lr=0.01, anchor=anchor, select="last")
        start = _weights(distiller).clone()
        distiller.run()
        moved[anchor] = float((_weights(distiller) - start).norm())
    # lr*anchor = 0.5: each step undoes half the distance, so the weights stay ~ one Adam step away
    assert moved[50.0] < 0.3 * moved[0.0], moved


def test_fresh_copies_are_new_every_epoch_and_labelled_by_the_teacher(pair: tuple[Path, Path]) -> None:
    distiller = _distiller(pair, augment=2)
    assert distiller.fresh_copies and distiller.train.n == 3 * 40
    given = distiller.train.dataset.arrays["x"][:40].copy()
    first_copies = distiller.train.dataset.arrays["x"][40:].copy()
    distiller._refresh_copies(2)
    x = distiller.train.dataset.arrays["x"]
    assert x.shape == (120, 8)
    np.testing.assert_array_equal(x[:40], given)  # the given samples stay (and keep their targets)
    assert not np.allclose(x[40:], first_copies)
    teacher = onnx.load(str(pair[0]))
    w1, w2 = (numpy_helper.to_array(t) for t in teacher.graph.initializer)
    np.testing.assert_allclose(distiller.train.targets["y"], np.maximum(x @ w1, 0) @ w2, rtol=1e-4, atol=1e-5)
    assert not _distiller(pair, augment=2, fresh_copies=False).fresh_copies
    assert not _distiller(pair, augment=0).fresh_copies  # nothing to refresh


def test_outputs_of_another_length_for_the_copies_relabel_the_whole_set(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder Loop's output length depends on the inputs: copies labelled apart may not concatenate."""
    real, calls = distiller_module.teacher_targets, []

    def longer_for_copies(teacher, dataset, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(dataset.n_samples)
        out = real(teacher, dataset, *args, **kwargs)
        return {k: np.pad(v, ((0, 0), (0, 1))) for k, v in out.items()} if dataset.n_samples == 80 else out

    monkeypatch.setattr(distiller_module, "teacher_targets", longer_for_copies)
    distiller = _distiller(pair, augment=2)
    assert calls[:3] == [40, 80, 120]  # the copies (2 x 40) came out 5 wide: all 120 samples labelled in one run
    assert distiller.train.n == 120 and distiller.train.targets["y"].shape == (120, 4)


def test_copies_the_time_budget_cannot_train_on_are_not_made(pair: tuple[Path, Path]) -> None:
    distiller = _distiller(pair, augment=3, max_seconds=10)  # 40 given samples
    assert distiller.copies == 3 and distiller.train.n == 160  # a fast teacher: every copy is affordable
    # 10 s / (2 x 0.05 s per sample) = 100 samples: the given 40 and one copy
    assert [distiller._affordable_copies(t) for t in (1e-6, 0.05, 1.0)] == [3, 1, 0]
    assert _distiller(pair, augment=3)._affordable_copies(1.0) == 3  # no budget: no cap


def test_weights_the_teacher_holds_unchanged_train_at_their_own_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.5, (8, 16)).astype(np.float32), rng.normal(0, 0.5, (16, 4)).astype(np.float32)
    teacher = _mlp(tmp_path / "teacher.onnx", w1, w2)
    student = _mlp(tmp_path / "student.onnx", (w1 + rng.normal(0, 0.5, w1.shape)).astype(np.float32), w2)
    moved = {}
    for scale in (1.0, 0.01):
        distiller = _distiller((teacher, student), lr=0.01, unchanged_lr=scale, select="last")
        groups = distiller._param_groups()
        assert len(groups) == (1 if scale == 1.0 else 2)
        distiller.run()
        w2_now = distiller.module.tensor("w2").detach().numpy()
        moved[scale] = float(np.abs(w2_now - w2).max())
    assert moved[0.01] < 0.1 * moved[1.0], moved  # w2 (the teacher's own) barely moves


@pytest.mark.parametrize(
    "field", [{"check_seconds": 0}, {"anchor": -1.0}, {"backoff": -1}, {"unchanged_lr": 0}, {"unchanged_lr": 2}]
)
def test_new_options_are_validated(field: dict) -> None:
    with pytest.raises(ValidationError):
        DistillConfig.model_validate(field)
