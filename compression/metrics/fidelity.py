"""How far a compressed model's outputs are from the input model's: per output, per sample and per slice.

Pooled figures hide damage (a whole-tensor cosine of 0.99 next to time steps at 0.8), so every output is
also judged per sample and per slice along its small axes, reporting the WORST value. What a sample and a
slice are depends on the output's kind, read from its shape (`output_kind`):

- the sample axis is the leading axis (the batch axis, or the axis the eval set stacks complete feeds on;
  with stacked feeds, the model's own leading batch axis of 1 is dropped too). `p` is the shape of one sample.
- `ids`: integer or boolean outputs (predicted ids, masks): the share of unchanged values.
- `values`: fewer than 2 values per sample (a probability, a score): pooled figures, and the largest change of
  one value (`worst_value_fidelity`): a pooled cosine of 0.999 hides a probability that moved by 0.03.
- `class_scores`: one axis of >= 2 values per sample, all other axes 1 ([N, C], [N, 1, C], [N, C, 1, 1]):
  top-1 agreement and per-sample cosine; when every value lies in [0, 1] but the rows are not distributions
  (independent sigmoids: multi-label scores, or a VAD's per-frame probabilities stacked in one sample), also
  the largest change of one value (`worst_value_fidelity`).
- `sequence`: `p` of rank 2, [T, C] (a recognizer's steps, a tagger's tokens, a detector's anchors):
  per-sample cosine and per-step cosine over C; `top1_per_step` when C >= 2, and `step_scores` says whether
  the steps are probability (or log-probability) distributions, i.e. step-wise class scores. With C = 1 (one
  probability per character) the largest change of one value (`worst_value_fidelity`). When the last axis is
  at least 8x the first (and at least 256 columns) and the steps are not distributions ([4 + classes, 8400] of a YOLO head: channels
  first, one anchor per column), the columns are slices too.
- `dense_map`: `p` of rank >= 3, [C, H, W] (leading axes count as channels): per-sample cosine, per-channel
  cosine over H x W and per-tile cosine over C x TILE x TILE positions.
- outputs whose shapes vary across inputs (a `Loop` or a data-dependent Slice that stops at a different step
  per input: `run_dataset(ragged=True)` keeps one array per sample) are judged input by input with the rules
  above, the kind read from the largest sample, and `varying_shape` set. Worst cases are over all inputs, rates
  are pooled over all positions, and an input whose output shape differs from the reference's (a decoder that
  stops at a different step) fails: cosine 0, no agreeing steps, `length_mismatches` counts it.
- `unaligned`: the kind of such an array itself (`output_kind` of a 1-d object array).

Slices whose reference and output norms are both below `SLICE_FLOOR` x the sample's largest slice norm are
not judged: a background anchor scoring 0.001 vs 0.002 is not a broken model. Whole-tensor cosine also hides
collapsed parts of an output (scores in 0..1 next to boxes in pixels), so small outputs are also compared
channel by channel along their last axis (`min_channel_cosine`, pooled over samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum

import numpy as np
from pydantic import BaseModel, Field

SMALL_LAST_AXIS = 64
MAX_CLASSES = 100_000
SLICE_FLOOR = 0.01
ANCHOR_RATIO = 8  # a [A, B] sequence with B >= 8 A (not distributions) is also judged per column: anchors
MIN_ANCHOR_COLUMNS = 256  # ... when B is a detector's anchor count (hundreds at least), not a feature width
TILE = 32
MAX_SNR_DB = 300.0  # identical outputs: a finite figure keeps the metrics plain JSON
SCORE_TOLERANCE = 1e-3  # rows summing to 1 (or log-summing to 0) within this are probability distributions


class OutputKind(StrEnum):
    IDS = "ids"
    VALUES = "values"
    CLASS_SCORES = "class_scores"
    SEQUENCE = "sequence"
    DENSE_MAP = "dense_map"
    UNALIGNED = "unaligned"


SLICE_NAMES = {
    OutputKind.SEQUENCE: "step (cosine over the last axis)",
    OutputKind.DENSE_MAP: f"channel (over H x W) or {TILE}x{TILE} tile (over channels)",
}


class OutputFidelity(BaseModel):
    kind: OutputKind | None = None
    cosine: float
    max_abs_diff: float
    mean_abs_diff: float
    min_channel_cosine: float | None = None
    top1_agreement: float | None = Field(None, description="class-score outputs: share of samples whose argmax agrees")
    worst_sample_cosine: float | None = None
    worst_slice_cosine: float | None = None
    slice: str | None = Field(None, description="what one slice of worst_slice_cosine is")
    top1_per_step: float | None = Field(None, description="sequences: share of steps whose argmax agrees")
    step_scores: bool | None = Field(None, description="sequences: the steps are probability distributions")
    score_head: bool | None = Field(
        None, description="a linear head (MatMul/Gemm + bias) or Softmax/Sigmoid computes it (metrics.output_heads)"
    )
    worst_sample_snr_db: float | None = None
    worst_value_fidelity: float | None = Field(
        None,
        description="outputs of one value per sample or per step: 1 - the largest change of one value over all "
        "samples, relative to max(1, largest |reference value|) (a probability moving by 0.03 reads 0.97)",
    )
    agreement: float | None = Field(None, description="integer outputs: share of unchanged values")
    worst_sample_agreement: float | None = None
    varying_shape: bool | None = Field(
        None, description="the output's shape varies across inputs: every input was judged as one sample"
    )
    length_mismatches: int | None = Field(
        None, description="varying-shape outputs: inputs whose output shape differs from the reference's (failed)"
    )


class Accuracy(BaseModel):
    input: float
    output: float
    drop: float
    output_name: str | None = Field(None, description="the class-score output the labels were scored against")


class Fidelity(BaseModel):
    synthetic: bool
    n_samples: int
    outputs: dict[str, OutputFidelity]
    top1_agreement: float | None = None
    accuracy: Accuracy | None = None
    worst_sample_cosine: float | None = Field(None, description="lowest per-sample cosine over the outputs")
    worst_slice_cosine: float | None = Field(None, description="lowest per-slice cosine over the outputs")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0.0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.dot(a, b) / norm)


def sample_shape(shape: tuple[int, ...], n_samples: int, layout: str) -> tuple[int, ...] | None:
    """The shape of one sample of an output, or None when the output has no sample axis of n_samples."""
    if len(shape) == 0 or shape[0] != n_samples:
        return None
    per_sample = tuple(shape[1:])
    if layout == "stacked" and len(per_sample) >= 2 and per_sample[0] == 1:
        per_sample = per_sample[1:]  # the model's own batch axis of one sample
    return per_sample


def output_kind(values: np.ndarray, n_samples: int, layout: str = "batched") -> OutputKind:
    """The output's kind from its dtype and the shape of one sample (see the module docstring)."""
    if values.dtype == object:
        return OutputKind.UNALIGNED
    if values.dtype.kind not in "fc":
        return OutputKind.IDS
    per_sample = sample_shape(values.shape, n_samples, layout)
    if per_sample is None:
        return OutputKind.VALUES if values.size <= n_samples else OutputKind.UNALIGNED
    spread = [size for size in per_sample if size != 1]
    if not spread:
        return OutputKind.VALUES
    if len(spread) == 1 and not (len(per_sample) == 2 and per_sample[-1] == 1):
        return OutputKind.CLASS_SCORES if spread[0] <= MAX_CLASSES else OutputKind.VALUES
    return OutputKind.SEQUENCE if len(per_sample) == 2 else OutputKind.DENSE_MAP


def class_scores(values: np.ndarray, n_samples: int, layout: str = "batched") -> np.ndarray | None:
    """[N, C] view of an output that holds one score vector per sample, else None."""
    if values.size == 0 or output_kind(values, n_samples, layout) != OutputKind.CLASS_SCORES:
        return None
    return values.reshape(n_samples, -1)


def row_cosines(ref: np.ndarray, out: np.ndarray, floor: float = SLICE_FLOOR) -> np.ndarray:
    """Cosine of each row of [N, S, F] arrays -> [N, S]; NaN where both rows are tiny within their sample.

    Two all-zero rows agree (1.0); one all-zero row against a non-zero one does not (0.0).
    """
    r, o = ref.astype(np.float64), out.astype(np.float64)
    nr, no = np.linalg.norm(r, axis=-1), np.linalg.norm(o, axis=-1)
    dot = np.einsum("nsf,nsf->ns", r, o)
    both = (nr > 0) & (no > 0)
    cos = np.where(both, dot / np.where(both, nr * no, 1.0), np.where((nr == 0) & (no == 0), 1.0, 0.0))
    cos = np.clip(cos, -1.0, 1.0)
    if floor > 0:
        scale = np.maximum(nr.max(axis=1, initial=0.0), no.max(axis=1, initial=0.0))[:, None]
        tiny = (nr <= floor * scale) & (no <= floor * scale)
        cos = np.where(tiny, np.nan, cos)
    return cos


def _worst(cosines: np.ndarray) -> float | None:
    judged = cosines[~np.isnan(cosines)]
    return float(judged.min()) if judged.size else None


def _tiles(values: np.ndarray, tile: int) -> np.ndarray:
    """[N, C, H, W] -> [N, tiles, C * tile * tile] (edge tiles zero-padded)."""
    n, c, h, w = values.shape
    th, tw = min(tile, h), min(tile, w)
    ph, pw = -h % th, -w % tw
    padded = np.pad(values, ((0, 0), (0, 0), (0, ph), (0, pw))) if ph or pw else values
    gh, gw = padded.shape[2] // th, padded.shape[3] // tw
    blocks = padded.reshape(n, c, gh, th, gw, tw).transpose(0, 2, 4, 1, 3, 5)
    return blocks.reshape(n, gh * gw, c * th * tw)


def _step_scores(rows: np.ndarray) -> bool:
    """Every row a probability distribution, or a log-probability one."""
    if rows.size == 0:
        return False
    values = rows.astype(np.float64)
    if values.min() >= -SCORE_TOLERANCE and np.all(np.abs(values.sum(axis=-1) - 1.0) <= SCORE_TOLERANCE):
        return True
    if values.max() <= SCORE_TOLERANCE:
        peak = values.max(axis=-1, keepdims=True)
        logsum = peak[..., 0] + np.log(np.exp(values - peak).sum(axis=-1))
        return bool(np.all(np.abs(logsum) <= SCORE_TOLERANCE))
    return False


def _independent_probabilities(rows: np.ndarray) -> bool:
    """Every value in [0, 1] while the rows are not distributions: each value is a probability of its own (a
    sigmoid per label or per frame), whose top-1 says nothing; e.g. 32 frames of a VAD stacked in one sample."""
    return bool(rows.size and rows.min() >= 0.0 and rows.max() <= 1.0 and not _step_scores(rows))


def _snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Worst per-sample signal-to-noise ratio of [N, F] rows, in dB."""
    signal = np.square(ref).sum(axis=1)
    noise = np.square(ref - out).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(noise > 0, 10.0 * np.log10(np.where(signal > 0, signal, 1e-300) / noise), MAX_SNR_DB)
    return float(min(MAX_SNR_DB, np.min(snr))) if snr.size else MAX_SNR_DB


def _channel_cosines(ref: np.ndarray, out: np.ndarray) -> float | None:
    if ref.ndim < 2 or ref.shape[-1] > SMALL_LAST_AXIS or ref.shape[-1] < 2:
        return None
    ref2 = ref.reshape(-1, ref.shape[-1])
    out2 = out.reshape(-1, out.shape[-1])
    return min(cosine(ref2[:, c], out2[:, c]) for c in range(ref2.shape[1]))


def compare_output(
    ref: np.ndarray, out: np.ndarray, n_samples: int, layout: str = "batched", kind: OutputKind | None = None
) -> OutputFidelity:
    """`kind`: judge as this kind instead of the one read from the shape (same rank only)."""
    if ref.dtype == object or out.dtype == object:
        return _compare_varying(_samples(ref, n_samples), _samples(out, n_samples), layout)
    kind = kind or output_kind(ref, n_samples, layout)
    if ref.shape != out.shape:
        return OutputFidelity(kind=kind, cosine=0.0, max_abs_diff=float("inf"), mean_abs_diff=float("inf"))
    if kind == OutputKind.IDS:
        return _compare_ids(ref, out, n_samples)
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    diff = np.abs(ref64 - out64)
    fidelity = OutputFidelity(
        kind=kind,
        cosine=cosine(ref64, out64),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        min_channel_cosine=_channel_cosines(ref64, out64),
    )
    if ref.size == 0:
        return fidelity
    if kind in (OutputKind.VALUES, OutputKind.UNALIGNED):  # one pooled figure: a sample has too few values
        fidelity.worst_sample_snr_db = _snr_db(ref64.reshape(1, -1), out64.reshape(1, -1))
        if kind == OutputKind.VALUES:  # a probability per sample: its largest change, not a pooled cosine
            fidelity.worst_value_fidelity = 1.0 - float(diff.max()) / max(1.0, float(np.abs(ref64).max()))
        return fidelity
    per_sample = sample_shape(ref.shape, n_samples, layout)
    assert per_sample is not None
    ref_rows, out_rows = ref64.reshape(n_samples, -1), out64.reshape(n_samples, -1)
    fidelity.worst_sample_cosine = _worst(row_cosines(ref_rows[None], out_rows[None], floor=0.0)[0])
    fidelity.worst_sample_snr_db = _snr_db(ref_rows, out_rows)
    if kind == OutputKind.CLASS_SCORES:
        fidelity.top1_agreement = float(np.mean(ref_rows.argmax(1) == out_rows.argmax(1)))
        if _independent_probabilities(ref_rows):  # sigmoid outputs (multi-label, per-frame): each value counts
            fidelity.worst_value_fidelity = 1.0 - float(diff.max())
    elif kind == OutputKind.SEQUENCE:
        steps, width = per_sample
        ref_steps, out_steps = ref64.reshape(n_samples, steps, width), out64.reshape(n_samples, steps, width)
        fidelity.slice = SLICE_NAMES[kind]
        if width >= 2:
            fidelity.worst_slice_cosine = _worst(row_cosines(ref_steps, out_steps))
            fidelity.top1_per_step = float(np.mean(ref_steps.argmax(-1) == out_steps.argmax(-1)))
            fidelity.step_scores = _step_scores(ref_steps)
            if width >= max(ANCHOR_RATIO * steps, MIN_ANCHOR_COLUMNS) and not fidelity.step_scores:
                # channels-first anchors ([4 + classes, 8400] of a YOLO head): one anchor is a column
                by_column = _worst(row_cosines(ref_steps.transpose(0, 2, 1), out_steps.transpose(0, 2, 1)))
                worst = [v for v in (fidelity.worst_slice_cosine, by_column) if v is not None]
                fidelity.worst_slice_cosine = min(worst) if worst else None
                fidelity.slice = "step (cosine over the last axis) or anchor (cosine over the first axis)"
        else:  # one value per step (a boundary probability per character): its largest change
            fidelity.worst_value_fidelity = 1.0 - float(diff.max()) / max(1.0, float(np.abs(ref64).max()))
    elif kind == OutputKind.DENSE_MAP:
        channels = math.prod(per_sample[:-2])
        h, w = per_sample[-2:]
        ref_map, out_map = ref64.reshape(n_samples, channels, h, w), out64.reshape(n_samples, channels, h, w)
        by_channel = row_cosines(ref_map.reshape(n_samples, channels, h * w), out_map.reshape(n_samples, channels, -1))
        by_tile = row_cosines(_tiles(ref_map, TILE), _tiles(out_map, TILE))
        worst = [v for v in (_worst(by_channel), _worst(by_tile)) if v is not None]
        fidelity.worst_slice_cosine = min(worst) if worst else None
        fidelity.slice = SLICE_NAMES[kind]
    return fidelity


def _samples(values: np.ndarray, n_samples: int) -> list[np.ndarray]:
    """One array per sample: the items of an object array, or the rows of an aligned output."""
    if values.dtype == object:
        return [np.asarray(v) for v in values]
    if values.ndim and values.shape[0] == n_samples:
        return [values[i] for i in range(n_samples)]
    return [values]


def _compare_varying(refs: list[np.ndarray], outs: list[np.ndarray], layout: str) -> OutputFidelity:
    """Each input judged as one sample (see the module docstring); a changed shape fails that input."""
    if len(refs) != len(outs):  # not even the same inputs: nothing comparable
        return OutputFidelity(
            cosine=0.0,
            max_abs_diff=float("inf"),
            mean_abs_diff=float("inf"),
            varying_shape=True,
            length_mismatches=max(len(refs), len(outs)),
        )
    largest = max(refs, key=lambda a: a.size) if refs else np.zeros(0, np.float32)
    kind = output_kind(largest[None], 1, layout)
    rank = len(sample_shape(largest[None].shape, 1, layout) or ())
    judged: list[tuple[np.ndarray, np.ndarray, OutputFidelity | None]] = []
    for ref, out in zip(refs, outs, strict=True):
        if ref.shape != out.shape or ref.dtype.kind != out.dtype.kind:
            judged.append((ref, out, None))  # another length: this input failed
            continue
        same_rank = len(sample_shape(ref[None].shape, 1, layout) or ()) == rank
        judged.append((ref, out, compare_output(ref[None], out[None], 1, layout, kind if same_rank else None)))
    matched = [(r, o, f) for r, o, f in judged if f is not None]
    mismatches = len(judged) - len(matched)
    width = largest.shape[-1] if largest.ndim else 1

    def lowest(field: str, failed: float | None) -> float | None:
        values = [getattr(f, field) for _, _, f in matched if getattr(f, field) is not None]
        if mismatches and failed is not None and (values or field == "worst_sample_cosine"):
            values.append(failed)
        return min(values) if values else None

    def pooled(field: str, weight: Callable[[np.ndarray], int]) -> float | None:
        """A share pooled over inputs (weighted by `weight`); an input that changed length counts as 0."""
        pairs = [(getattr(f, field), weight(r)) for r, _, f in matched if getattr(f, field) is not None]
        if not pairs:
            return None
        total = sum(w for _, w in pairs) + sum(weight(r) for r, _, f in judged if f is None)
        return float(sum(v * w for v, w in pairs) / total) if total else 1.0

    refs_ok, outs_ok = [r for r, _, _ in matched], [o for _, o, _ in matched]
    pooled_cosine = (
        cosine(np.concatenate([r.ravel() for r in refs_ok]), np.concatenate([o.ravel() for o in outs_ok]))
        if matched
        else 0.0
    )
    sizes = sum(r.size for r in refs_ok)
    step_scores = [f.step_scores for _, _, f in matched if f.step_scores is not None]
    fidelity = OutputFidelity(
        kind=kind,
        cosine=pooled_cosine,  # over the inputs whose shapes agree
        max_abs_diff=float("inf") if mismatches else max((f.max_abs_diff for _, _, f in matched), default=0.0),
        mean_abs_diff=float(sum(f.mean_abs_diff * r.size for r, _, f in matched) / sizes) if sizes else 0.0,
        min_channel_cosine=_pooled_channel_cosines(refs_ok, outs_ok),
        top1_agreement=pooled("top1_agreement", lambda r: 1),
        worst_sample_cosine=lowest("worst_sample_cosine", 0.0),
        worst_slice_cosine=lowest("worst_slice_cosine", 0.0),
        slice=next((f.slice for _, _, f in matched if f.slice), None),
        top1_per_step=pooled("top1_per_step", lambda r: max(1, r.size // max(1, width))),
        step_scores=all(step_scores) if step_scores else None,
        worst_sample_snr_db=lowest("worst_sample_snr_db", -MAX_SNR_DB),
        worst_value_fidelity=lowest("worst_value_fidelity", 0.0),
        agreement=pooled("agreement", lambda r: r.size),
        worst_sample_agreement=lowest("worst_sample_agreement", 0.0),
        varying_shape=True,
        length_mismatches=mismatches,
    )
    if kind == OutputKind.IDS and fidelity.agreement is not None:
        fidelity.cosine = fidelity.agreement
    return fidelity


def _pooled_channel_cosines(refs: list[np.ndarray], outs: list[np.ndarray]) -> float | None:
    """`min_channel_cosine` over every input's rows together, as for aligned outputs (one input's few steps
    would make a channel of a handful of values)."""
    if not refs or any(r.ndim < 2 or r.shape[-1] != refs[0].shape[-1] for r in refs):
        return None
    rows = [r.astype(np.float64).reshape(-1, r.shape[-1]) for r in refs]
    got = [o.astype(np.float64).reshape(-1, o.shape[-1]) for o in outs]
    return _channel_cosines(np.concatenate(rows), np.concatenate(got))


def _compare_ids(ref: np.ndarray, out: np.ndarray, n_samples: int) -> OutputFidelity:
    same = ref == out
    agree = float(np.mean(same)) if ref.size else 1.0
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    fidelity = OutputFidelity(
        kind=OutputKind.IDS,
        cosine=agree,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        agreement=agree,
    )
    if ref.size and ref.ndim and ref.shape[0] == n_samples:
        fidelity.worst_sample_agreement = float(same.reshape(n_samples, -1).mean(axis=1).min())
    return fidelity


def accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray, layout: str = "batched") -> tuple[str, float] | None:
    """(output name, top-1 accuracy) of the first output that holds one class-score vector per label."""
    flat = labels.reshape(-1)
    if flat.dtype.kind not in "iub":
        return None
    for name, values in outputs.items():
        scores = class_scores(values, flat.shape[0], layout)
        if scores is not None:
            return name, float(np.mean(scores.argmax(1) == flat))
    return None


def _lowest(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    n_samples: int,
    labels: np.ndarray | None,
    synthetic: bool,
    layout: str = "batched",
    score_heads: set[str] | frozenset[str] = frozenset(),
) -> Fidelity:
    """`score_heads`: outputs a score head computes (marked `score_head`; sequences of them are step scores)."""
    outputs = {name: compare_output(ref, candidate[name], n_samples, layout) for name, ref in reference.items()}
    for name, out in outputs.items():
        out.score_head = name in score_heads
    agreements = [o.top1_agreement for o in outputs.values() if o.top1_agreement is not None]
    result = Fidelity(
        synthetic=synthetic,
        n_samples=n_samples,
        outputs=outputs,
        top1_agreement=agreements[0] if agreements else None,
        worst_sample_cosine=_lowest([o.worst_sample_cosine for o in outputs.values()]),
        worst_slice_cosine=_lowest([o.worst_slice_cosine for o in outputs.values()]),
    )
    if labels is not None:
        before, after = accuracy(reference, labels, layout), accuracy(candidate, labels, layout)
        if before is not None and after is not None:
            result.accuracy = Accuracy(
                input=before[1], output=after[1], drop=before[1] - after[1], output_name=before[0]
            )
    return result
