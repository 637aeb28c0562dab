"""A distill step never returns a model worse than its input on the held-out selection data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compression.datasets import DatasetBundle
from compression.model_info import inspect_model
from compression.pipeline import run_pipeline
from compression.settings import EngineSettings
from compression.spec import CompressionSpec
from compression.training.guard import Scores, judge

SETTINGS = EngineSettings(latency_runs=5, latency_warmup=1)


def _prune_then_distill(dev, tmp_path: Path, distill: dict) -> tuple:  # noqa: ANN001
    """prune 0.5 (structured) -> distill on the unlabeled train split; the selection data is the eval split."""
    arrays = dict(np.load(dev.write_npz(tmp_path / "train.npz", "train")))
    arrays.pop("labels")
    np.savez(tmp_path / "train_unlabeled.npz", **arrays)
    paths = {"train": tmp_path / "train_unlabeled.npz", "eval": dev.write_npz(tmp_path / "test.npz", "test")}
    bundle = DatasetBundle.load(paths, inspect_model(dev.path).inputs)
    steps = [{"type": "prune", "method": "structured", "sparsity": 0.5}, {"type": "distill", **distill}]
    result = run_pipeline(dev.path, CompressionSpec.model_validate({"steps": steps}), bundle, tmp_path / "w",
                          settings=SETTINGS)  # fmt: skip
    return result, result.metrics.steps[0], result.metrics.steps[1]


@pytest.mark.slow
def test_training_that_hurts_returns_the_input_unchanged(digits_cnn, tmp_path: Path) -> None:  # noqa: ANN001
    # lr 1.0 wrecks the weights; select=last keeps the wrecked last epoch, so only the guard stands in between
    result, prune, distill = _prune_then_distill(digits_cnn, tmp_path, {"epochs": 2, "lr": 1.0, "select": "last"})
    details = distill.details
    assert details["best_epoch"] == 2 and details["returned"] == "input"
    assert details["guard"]["accepted"] is False and "returned unchanged" in details["reason"]
    assert details["guard"]["trained"]["mean_cosine"] <= details["guard"]["input"]["mean_cosine"]
    assert not distill.changed
    # the pipeline's model is the pruned one: its outputs (hence fidelity) and size are the prune step's
    assert result.metrics.fidelity == prune.fidelity and result.metrics.output.size_bytes == prune.size_bytes


@pytest.mark.slow
def test_training_that_helps_is_returned(digits_cnn, tmp_path: Path) -> None:  # noqa: ANN001
    _, _, distill = _prune_then_distill(digits_cnn, tmp_path, {"epochs": 4, "lr": 3e-3})
    details = distill.details
    assert details["returned"] == "trained" and details["guard"]["accepted"] is True and distill.changed
    assert details["guard"]["trained"]["mean_cosine"] > details["guard"]["input"]["mean_cosine"]


def test_the_verdict_needs_a_better_mean_and_no_worse_worst_sample() -> None:
    base = Scores(np.array([0.9, 0.5, 0.8]))
    assert judge(base, Scores(np.array([0.95, 0.6, 0.9])), 0.0, 3, "eval data").accepted
    assert not judge(base, Scores(np.array([0.9, 0.5, 0.8])), 0.0, 3, "eval data").accepted  # not better
    worse_worst = judge(base, Scores(np.array([1.0, 0.45, 1.0])), 0.0, 3, "eval data")
    assert not worse_worst.accepted and "worst sample" in worse_worst.reason
    assert judge(base, Scores(np.array([1.0, 0.45, 1.0])), 0.1, 3, "eval data").accepted
