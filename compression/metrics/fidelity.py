"""How far a compressed model's outputs are from the input model's, per output and per channel.

Whole-tensor cosine hides collapsed parts of an output (scores in 0..1 next to boxes in pixels),
so small outputs are also compared channel by channel along their last axis.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

SMALL_LAST_AXIS = 64


class OutputFidelity(BaseModel):
    cosine: float
    max_abs_diff: float
    mean_abs_diff: float
    min_channel_cosine: float | None = None
    top1_agreement: float | None = None


class Accuracy(BaseModel):
    input: float
    output: float
    drop: float


class Fidelity(BaseModel):
    synthetic: bool
    n_samples: int
    outputs: dict[str, OutputFidelity]
    top1_agreement: float | None = None
    accuracy: Accuracy | None = None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0.0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.dot(a, b) / norm)


def class_scores(values: np.ndarray, n_samples: int) -> np.ndarray | None:
    """[N, C] view of an output that holds one score vector per sample, else None."""
    if values.dtype.kind != "f" or values.size == 0 or values.size % n_samples:
        return None
    scores = values.reshape(n_samples, -1)
    return scores if 2 <= scores.shape[1] <= 100_000 else None


def _channel_cosines(ref: np.ndarray, out: np.ndarray) -> float | None:
    if ref.ndim < 2 or ref.shape[-1] > SMALL_LAST_AXIS or ref.shape[-1] < 2:
        return None
    ref2 = ref.reshape(-1, ref.shape[-1])
    out2 = out.reshape(-1, out.shape[-1])
    return min(cosine(ref2[:, c], out2[:, c]) for c in range(ref2.shape[1]))


def compare_output(ref: np.ndarray, out: np.ndarray, n_samples: int) -> OutputFidelity:
    if ref.shape != out.shape:
        return OutputFidelity(cosine=0.0, max_abs_diff=float("inf"), mean_abs_diff=float("inf"))
    if ref.dtype.kind not in "fc":
        agree = float(np.mean(ref == out)) if ref.size else 1.0
        diff = np.abs(ref.astype(np.float64) - out)
        return OutputFidelity(
            cosine=agree,
            max_abs_diff=float(diff.max()) if diff.size else 0.0,
            mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        )
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    fidelity = OutputFidelity(
        cosine=cosine(ref, out),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        min_channel_cosine=_channel_cosines(ref, out),
    )
    ref_scores, out_scores = class_scores(ref, n_samples), class_scores(out, n_samples)
    if ref_scores is not None and out_scores is not None:
        fidelity.top1_agreement = float(np.mean(ref_scores.argmax(1) == out_scores.argmax(1)))
    return fidelity


def accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float | None:
    """Top-1 accuracy of the first output that holds one class-score vector per label."""
    flat = labels.reshape(-1)
    if flat.dtype.kind not in "iub":
        return None
    for values in outputs.values():
        scores = class_scores(values, flat.shape[0])
        if scores is not None:
            return float(np.mean(scores.argmax(1) == flat))
    return None


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    n_samples: int,
    labels: np.ndarray | None,
    synthetic: bool,
) -> Fidelity:
    outputs = {name: compare_output(ref, candidate[name], n_samples) for name, ref in reference.items()}
    agreements = [o.top1_agreement for o in outputs.values() if o.top1_agreement is not None]
    result = Fidelity(
        synthetic=synthetic,
        n_samples=n_samples,
        outputs=outputs,
        top1_agreement=agreements[0] if agreements else None,
    )
    if labels is not None:
        before, after = accuracy(reference, labels), accuracy(candidate, labels)
        if before is not None and after is not None:
            result.accuracy = Accuracy(input=before, output=after, drop=before - after)
    return result
