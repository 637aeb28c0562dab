"""Training details of distill: augmentation of small unlabeled sets, learning-rate schedule, scaled losses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compression.datasets import Dataset
from compression.training.augment import AUTO_TARGET_SAMPLES, augment, auto_copies
from compression.training.distiller import auto_lr, lr_factor
from compression.training.losses import teacher_scale
from compression.training.plan import plan_losses


def _stacked(n: int, labels: bool = False) -> Dataset:
    rng = np.random.default_rng(0)
    arrays = {
        "audio": rng.normal(0, 1, (n, 1, 64)).astype(np.float32),
        "state": np.zeros((n, 2, 1, 8), np.float32),
        "sr": np.full(n, 16000, np.int64),
    }
    return Dataset(arrays=arrays, labels=np.zeros(n, np.int64) if labels else None, layout="stacked",
                   scalars=frozenset({"sr"}))  # fmt: skip


def test_augment_mixes_float_inputs_and_keeps_the_rest() -> None:
    data = _stacked(16)
    copies = auto_copies(data)
    assert copies >= 1 and 16 * (copies + 1) >= AUTO_TARGET_SAMPLES // 2
    out = augment(data, copies, seed=0)
    assert out.n_samples == 16 * (copies + 1) and out.layout == "stacked" and out.scalars == data.scalars
    np.testing.assert_array_equal(out.arrays["audio"][:16], data.arrays["audio"])  # the given samples come first
    assert not np.allclose(out.arrays["audio"][16:32], data.arrays["audio"])  # new inputs, not repeats
    assert np.all(out.arrays["sr"] == 16000) and out.arrays["sr"].dtype == np.int64  # integers untouched
    assert np.all(out.arrays["state"] == 0)  # a zero state stays zero (no noise where the input never varies)
    assert augment(data, copies, seed=0).arrays["audio"].tobytes() == out.arrays["audio"].tobytes()  # seeded


def test_no_augmentation_for_labelled_or_large_sets() -> None:
    assert auto_copies(_stacked(16, labels=True)) == 0
    assert augment(_stacked(16, labels=True), 3, seed=0).n_samples == 16
    assert auto_copies(_stacked(AUTO_TARGET_SAMPLES)) == 0


def test_learning_rate_warms_up_then_decays_at_one_default_peak() -> None:
    assert lr_factor(0.0, 0.05) < 0.1 and lr_factor(0.05, 0.05) == pytest.approx(1.0)
    assert lr_factor(0.5, 0.05) < 1.0 and lr_factor(1.0, 0.05) == pytest.approx(0.0, abs=1e-9)
    assert auto_lr(64) == auto_lr(4) == auto_lr(1) == pytest.approx(1e-3)  # Adam's step does not scale


def test_teacher_scale_is_the_mean_square_with_a_floor() -> None:
    assert teacher_scale(np.full((4, 3), 300.0, np.float32)) == pytest.approx(90000.0)
    assert teacher_scale(np.zeros((4, 3), np.float32)) > 0


def test_without_eval_data_a_fifth_of_train_picks_the_epoch() -> None:
    from compression.training.distiller import _hold_out

    train, held, on = _hold_out(_stacked(20))
    assert (train.n_samples, held.n_samples, on) == (16, 4, "held-out part of train")
    np.testing.assert_array_equal(held.arrays["audio"], _stacked(20).arrays["audio"][16:])
    small, same, on_small = _hold_out(_stacked(4))
    assert small.n_samples == same.n_samples == 4 and on_small == "train"


def test_time_major_outputs_are_read_with_the_samples_leading() -> None:
    from compression.training.teacher import _batch_axis

    assert _batch_axis((20, 6, 37), 6) == 1  # [T, N, C] from a CRNN
    assert _batch_axis((6, 20, 37), 6) == 0
    assert _batch_axis((6, 6, 37), 6) == 0 and _batch_axis((1, 20), 1) == 0  # ambiguous: the usual axis 0


def _normalised_by_div() -> onnx.ModelProto:
    """[N, 4] scores normalised by Exp / ReduceSum / Div (no Softmax node), like magika's output."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.linspace(-1, 1, 12).astype(np.float32).tolist())
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("Exp", ["z"], ["e"]),
        helper.make_node("ReduceSum", ["e"], ["s"], axes=[1], keepdims=1),
        helper.make_node("Div", ["e", "s"], ["probs"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 4])], [w])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_outputs_normalised_without_softmax_are_distilled_as_probabilities() -> None:
    model = _normalised_by_div()
    scores = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    probs = scores / scores.sum(axis=1, keepdims=True)
    (plan,) = plan_losses(model, model, {"probs": probs}, None, False, {})
    assert plan.kind == "kl" and plan.teacher_form == "probs" and plan.student_form == "probs"
    (raw,) = plan_losses(model, model, {"probs": scores * 3}, None, False, {})  # not rows summing to 1
    assert raw.kind == "kl" and raw.teacher_form == "logits" and raw.student_form == "logits"


def test_token_sequences_get_tokens_swapped_outside_their_padding() -> None:
    rng = np.random.default_rng(0)
    n, length = 20, 16
    tokens = rng.integers(5, 50, (n, length)).astype(np.int64)
    lengths = rng.integers(6, length + 1, n).astype(np.int64)
    for i, used in enumerate(lengths):
        tokens[i, used:] = 0  # padded at the end
    data = Dataset(arrays={"ids": tokens, "length": lengths}, labels=None, layout="batched")
    copies = auto_copies(data)
    assert copies >= 1  # integer-only data is augmented now
    out = augment(data, copies, seed=0)
    ids, out_lengths = out.arrays["ids"], out.arrays["length"]
    assert out.n_samples == n * (copies + 1) and ids.dtype == np.int64
    np.testing.assert_array_equal(out_lengths, np.tile(lengths, copies + 1))  # lengths are never changed
    padded = np.tile(np.arange(length)[None, :] >= lengths[:, None], (copies + 1, 1))
    assert np.all(ids[padded] == 0)  # padding stays padding
    changed = (ids[n:] != np.tile(tokens, (copies, 1)))[~padded[n:]].mean()
    assert 0.02 < changed < 0.3  # about a tenth of the real tokens
    assert set(np.unique(ids[~padded])) <= set(np.unique(tokens[tokens > 0]))  # drawn from the set's own tokens
