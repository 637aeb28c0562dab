"""Fidelity judged per sample and per slice, with what a slice is read from the output's kind."""

from __future__ import annotations

import numpy as np
import pytest

from compression.metrics.fidelity import OutputKind, compare, compare_output, output_kind

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("shape", "layout", "kind"),
    [
        ((8, 10), "batched", OutputKind.CLASS_SCORES),
        ((8, 1, 10), "batched", OutputKind.CLASS_SCORES),
        ((8, 10, 1, 1), "batched", OutputKind.CLASS_SCORES),  # a Conv head
        ((8, 40, 97), "batched", OutputKind.SEQUENCE),
        ((8, 40, 1), "batched", OutputKind.SEQUENCE),  # one value per step: not class scores over time
        ((8, 8400, 6), "batched", OutputKind.SEQUENCE),  # detector anchors
        ((8, 1, 64, 64), "batched", OutputKind.DENSE_MAP),
        ((8, 3, 2, 16, 16), "batched", OutputKind.DENSE_MAP),
        ((8, 1, 40, 97), "stacked", OutputKind.SEQUENCE),  # stacked feeds keep the model's batch axis of 1
        ((8, 1, 1, 64, 64), "stacked", OutputKind.DENSE_MAP),
        ((8,), "batched", OutputKind.VALUES),
        ((8, 1), "batched", OutputKind.VALUES),
    ],
)
def test_output_kind_from_the_shape_of_one_sample(shape, layout, kind) -> None:
    assert output_kind(np.zeros(shape, np.float32), 8, layout) == kind


def test_integer_outputs_are_ids() -> None:
    ref = RNG.integers(0, 5, (8, 24))
    out = ref.copy()
    out[3, :12] = (out[3, :12] + 1) % 5
    fidelity = compare_output(ref, out, 8)
    assert fidelity.kind == OutputKind.IDS
    assert fidelity.agreement == pytest.approx(1 - 12 / (8 * 24)) and fidelity.worst_sample_agreement == 0.5


def test_one_broken_sample_shows_in_the_worst_per_sample_cosine() -> None:
    ref = RNG.standard_normal((200, 10)).astype(np.float32)
    out = ref.copy()
    out[7] = RNG.standard_normal(10)  # one sample out of 200 is garbage
    fidelity = compare_output(ref, out, 200)
    assert fidelity.cosine > 0.99  # pooled: hidden
    assert fidelity.worst_sample_cosine < 0.8  # worst case: shown
    assert fidelity.worst_sample_snr_db < 5.0


def test_one_broken_time_step_shows_in_the_worst_per_step_cosine() -> None:
    """A recognizer [N, T, C] whose whole-tensor cosine passes while one time step has collapsed."""
    logits = RNG.standard_normal((4, 40, 97)) * 3
    ref = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    out = ref.copy()
    out[2, 17] = np.roll(out[2, 17], 5)
    fidelity = compare_output(ref.astype(np.float32), out.astype(np.float32), 4)
    assert fidelity.kind == OutputKind.SEQUENCE and fidelity.step_scores is True
    assert fidelity.worst_sample_cosine > 0.9 and fidelity.worst_slice_cosine < 0.5
    assert fidelity.top1_per_step == pytest.approx(1 - 1 / 160) and fidelity.top1_agreement is None


def test_features_are_not_step_scores() -> None:
    ref = RNG.standard_normal((4, 20, 16)).astype(np.float32)
    assert compare_output(ref, ref, 4).step_scores is False


def test_a_damaged_map_tile_shows_in_the_worst_per_slice_cosine() -> None:
    ref = RNG.uniform(0.1, 1.0, (2, 1, 128, 128)).astype(np.float32)
    out = ref.copy()
    out[1, 0, 32:64, 64:96] = RNG.uniform(0.1, 1.0, (32, 32))  # one 32x32 tile replaced by noise
    fidelity = compare_output(ref, out, 2)
    assert fidelity.kind == OutputKind.DENSE_MAP and fidelity.top1_agreement is None
    assert fidelity.worst_sample_cosine > 0.97 and fidelity.worst_slice_cosine < 0.9


def test_independent_probabilities_are_judged_by_their_largest_change() -> None:
    """A VAD's 32 per-frame probabilities stacked in one sample read as class scores; top-1 of them says nothing
    (silero_vad: top-1 1.0 and cosine 0.999 while one frame moved by 0.07), so each value's change counts."""
    ref = RNG.uniform(0.0, 0.2, (16, 32)).astype(np.float32)
    out = ref.copy()
    out[3, int(ref[3].argmin())] += 0.07  # the lowest frame: its top-1 does not move
    fidelity = compare_output(ref, out, 16, "stacked")
    assert fidelity.kind == OutputKind.CLASS_SCORES and fidelity.top1_agreement == 1.0
    assert fidelity.worst_value_fidelity == pytest.approx(0.93, abs=1e-6)
    softmax = np.exp(ref) / np.exp(ref).sum(axis=1, keepdims=True)  # distributions: top-1 stays the rule
    assert compare_output(softmax, softmax * 1.01, 16).worst_value_fidelity is None
    logits = RNG.standard_normal((16, 10)).astype(np.float32)
    assert compare_output(logits, logits, 16).worst_value_fidelity is None


def test_tiny_slices_are_not_judged() -> None:
    """Background anchors scoring 0.001 vs 0.002 are not a broken model."""
    ref = np.zeros((2, 50, 6), np.float32)
    ref[:, :5] = RNG.uniform(10, 600, (2, 5, 6))
    ref[:, 5:] = 1e-3
    out = ref.copy()
    out[:, 5:] = RNG.uniform(0, 2e-3, (2, 45, 6))
    assert compare_output(ref, out, 2).worst_slice_cosine == pytest.approx(1.0)


def test_the_model_level_fidelity_carries_the_worst_figures() -> None:
    scores = RNG.standard_normal((16, 5)).astype(np.float32)
    steps = RNG.standard_normal((16, 12, 8)).astype(np.float32)
    broken = steps.copy()
    broken[0, 0] = -broken[0, 0]
    fidelity = compare(
        {"scores": scores, "steps": steps}, {"scores": scores, "steps": broken}, 16, None, synthetic=False
    )
    assert fidelity.worst_slice_cosine == pytest.approx(-1.0) and fidelity.top1_agreement == 1.0
    assert fidelity.worst_sample_cosine == fidelity.outputs["steps"].worst_sample_cosine < 1.0


def test_accuracy_names_the_output_it_scored() -> None:
    scores = RNG.standard_normal((16, 5)).astype(np.float32)
    labels = scores.argmax(1)
    features = np.ones((16, 3, 4), np.float32)  # first, but not class scores
    outputs = {"features": features, "probs": scores}
    fidelity = compare(outputs, outputs, 16, labels, False)
    assert fidelity.accuracy.output_name == "probs" and fidelity.accuracy.input == 1.0
