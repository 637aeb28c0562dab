"""The last word of a distill step: is the trained student better than the model it started from?

Best-epoch selection looks at the torch module's mean loss on a few held-out samples; a student can win
there and still be worse where it matters (its worst sample, or the exported graph run by onnxruntime).
Before a distill step returns anything, both graphs — the step's input student and the trained one — run
in onnxruntime on the held-out selection data, and each sample gets a score: the lowest cosine, over the
distilled outputs, between the model's output and the teacher's (outputs of another length are
zero-padded to the common shape, so a decoder that stops elsewhere is penalised). The trained student
is kept only when its mean score is higher and its worst score is not lower (within `tolerance`);
otherwise the step returns its input unchanged and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compression.datasets import Dataset
from compression.training.teacher import teacher_targets


@dataclass
class Scores:
    """Per-sample scores of one model on the selection data (higher is better, at most 1)."""

    per_sample: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.per_sample.mean()) if self.per_sample.size else 0.0

    @property
    def worst(self) -> float:
        return float(self.per_sample.min()) if self.per_sample.size else 0.0

    def as_metrics(self) -> dict[str, float]:
        return {"mean_cosine": round(self.mean, 6), "worst_cosine": round(self.worst, 6)}


@dataclass
class GuardVerdict:
    accepted: bool
    reason: str
    before: Scores
    after: Scores
    samples: int
    data: str

    def as_metrics(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "data": self.data,
            "samples": self.samples,
            "input": self.before.as_metrics(),
            "trained": self.after.as_metrics(),
        }


def _padded(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if a.shape == shape:
        return a
    out = np.zeros(shape, dtype=np.float64)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


def _cosine_rows(student: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Cosine per leading entry; two all-zero rows count as identical, one all-zero row as 0."""
    s = student.astype(np.float64)
    t = teacher.astype(np.float64)
    if s.ndim != t.ndim:  # a rank change cannot be compared: the worst score
        return np.zeros(t.shape[0] if t.ndim else 1)
    if s.shape != t.shape:
        shape = tuple(max(a, b) for a, b in zip(s.shape, t.shape, strict=True))
        s, t = _padded(s, shape), _padded(t, shape)
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    s = np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0) if not np.isfinite(s).all() else s
    dot = (s * t).sum(axis=1)
    norms = np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1)
    both_zero = (np.linalg.norm(s, axis=1) == 0) & (np.linalg.norm(t, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos)


def score_model(
    model: Path | onnx.ModelProto,
    dataset: Dataset,
    targets: dict[str, np.ndarray],
    outputs: Sequence[tuple[str, str]],
    threads: int,
    batch_size: int,
    max_bytes: int,
) -> Scores:
    """Per-sample lowest cosine over `outputs` ((student output, teacher output) pairs) against `targets`."""
    axes: dict[str, int] = {}
    produced = teacher_targets(model, dataset, [], threads, batch_size, max_bytes, axes)
    per_sample: np.ndarray | None = None
    for student_name, teacher_name in outputs:
        cos = _cosine_rows(produced[student_name], targets[teacher_name])
        per_sample = cos if per_sample is None else np.minimum(per_sample, cos)
    return Scores(per_sample if per_sample is not None else np.zeros(0))


def judge(before: Scores, after: Scores, tolerance: float, samples: int, data: str) -> GuardVerdict:
    """Keep the trained student only when it is better on average and no worse on its worst sample."""
    if not np.isfinite(after.per_sample).all():
        reason = "the trained student produces non-finite outputs on the selection data"
        return GuardVerdict(False, reason, before, after, samples, data)
    if after.mean <= before.mean:
        reason = (
            f"the trained student is not better than its input on the {data} ({samples} samples): mean cosine "
            f"to the teacher {after.mean:.4f} vs {before.mean:.4f}; the input is returned unchanged"
        )
        return GuardVerdict(False, reason, before, after, samples, data)
    if after.worst < before.worst - tolerance:
        reason = (
            f"the trained student is worse than its input on its worst sample of the {data} ({samples} samples): "
            f"cosine to the teacher {after.worst:.4f} vs {before.worst:.4f}; the input is returned unchanged"
        )
        return GuardVerdict(False, reason, before, after, samples, data)
    reason = (
        f"better than its input on the {data} ({samples} samples): mean cosine {before.mean:.4f} -> "
        f"{after.mean:.4f}, worst {before.worst:.4f} -> {after.worst:.4f}"
    )
    return GuardVerdict(True, reason, before, after, samples, data)
