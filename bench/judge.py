"""An independent judge of a compressed model: onnxruntime, numpy and nothing from the engine.

Fidelity is judged per feed (one sample) and per slice along a small axis, reporting the WORST value,
never a pooled one: a recognizer whose whole-tensor cosine is 0.99 can still have time steps at 0.8.

- worst per-sample fidelity: the lowest whole-output cosine over the eval feeds (for probabilities,
  1 - the largest absolute change; for integer predictions, the share of unchanged positions).
- worst per-slice fidelity: the lowest cosine of one slice (a time step, an anchor, a map tile) over all
  feeds. Slices whose reference AND output are both tiny (norm below `SLICE_FLOOR` x the largest slice
  norm of that feed) are skipped: a background anchor scoring 0.001 vs 0.002 is not a broken model.
- top-1 agreement: argmax over the last axis, per sample (classifiers) or per step (recognizers, taggers).
- latency ratio: output/input timed interleaved (ABBA rounds, same feed, one thread), the median of the
  per-round ratios with a bootstrap 95% interval; rounds continue until the interval is narrow or the
  time budget is spent.

Reuse from any bench: `judge_outputs(reference, candidate, judgings)` and `compare_latency(a, b, feed)`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_zoo.third_party import OutputJudging, OutputKind

SLICE_FLOOR = 0.01
TILE = 32
BOOTSTRAP_RESAMPLES = 1000


def make_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # Paddle exports warn on every Loop iteration
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_all(session: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    return [session.run(None, feed) for feed in feeds]


# --- fidelity measures -------------------------------------------------------------------------------------


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two tensors flattened; two all-zero tensors agree (1.0), one all-zero one does not (0.0)."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a64, b64) / (na * nb), -1.0, 1.0))


def row_cosines(ref: np.ndarray, out: np.ndarray, floor: float = SLICE_FLOOR) -> np.ndarray:
    """Cosine of each row of two [slices, features] matrices, skipping rows that are tiny in both."""
    r, o = ref.astype(np.float64), out.astype(np.float64)
    nr, no = np.linalg.norm(r, axis=1), np.linalg.norm(o, axis=1)
    scale = max(float(nr.max(initial=0.0)), float(no.max(initial=0.0)))
    keep = (nr > floor * scale) | (no > floor * scale)
    if not keep.any():
        return np.ones(0)
    nr, no, r, o = nr[keep], no[keep], r[keep], o[keep]
    both = (nr > 0) & (no > 0)
    cos = np.where(both, np.einsum("ij,ij->i", r, o) / np.where(both, nr * no, 1.0), 0.0)
    return np.clip(cos, -1.0, 1.0)


def slice_cosines(ref: np.ndarray, out: np.ndarray, axis: int) -> np.ndarray:
    """Cosine per index of `axis` (each slice = every other axis flattened)."""
    rows = ref.shape[axis]
    return row_cosines(np.moveaxis(ref, axis, 0).reshape(rows, -1), np.moveaxis(out, axis, 0).reshape(rows, -1))


def tile_cosines(ref: np.ndarray, out: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Cosine per spatial tile of a [..., H, W] map (all leading axes of a tile flattened together)."""
    h, w = ref.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    ref_tiles, out_tiles = [], []
    for y in range(0, h, th):
        for x in range(0, w, tw):
            ref_tiles.append(ref[..., y : y + th, x : x + tw].ravel())
            out_tiles.append(out[..., y : y + th, x : x + tw].ravel())
    width = max(len(t) for t in ref_tiles)
    pad = lambda t: np.pad(t.astype(np.float64), (0, width - len(t)))  # noqa: E731  (edge tiles are smaller)
    return row_cosines(np.stack([pad(t) for t in ref_tiles]), np.stack([pad(t) for t in out_tiles]))


def top1_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Share of positions whose argmax over the last axis is unchanged."""
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(out, axis=-1)))


# --- per-output and per-model verdicts ------------------------------------------------------------------


@dataclass
class OutputVerdict:
    name: str
    kind: OutputKind
    worst_sample: float | None  # None: not judged (ignored output)
    worst_slice: float | None  # None: the kind has no slices
    top1: float | None  # None: not class scores


@dataclass
class FidelityVerdict:
    outputs: list[OutputVerdict]
    n_feeds: int

    @property
    def worst_sample(self) -> float | None:
        return _min(o.worst_sample for o in self.outputs)

    @property
    def worst_slice(self) -> float | None:
        return _min(o.worst_slice for o in self.outputs)

    @property
    def top1(self) -> float | None:
        return _min(o.top1 for o in self.outputs)

    def clean(self, min_fidelity: float, min_top1: float) -> bool:
        """Every judged figure at or above its threshold."""
        figures = [self.worst_sample, self.worst_slice]
        return all(f is None or f >= min_fidelity for f in figures) and (self.top1 is None or self.top1 >= min_top1)


def _min(values: object) -> float | None:
    present = [v for v in values if v is not None]  # type: ignore[attr-defined]
    return min(present) if present else None


def judge_output(name: str, judging: OutputJudging, refs: list[np.ndarray], outs: list[np.ndarray]) -> OutputVerdict:
    """Worst-case figures of one output over all feeds (each list holds that output for every feed)."""
    kind = judging.kind
    for ref, out in zip(refs, outs, strict=True):
        if ref.shape != out.shape:
            return OutputVerdict(name, kind, 0.0, 0.0 if kind != OutputKind.STATE else None, None)
    if kind == OutputKind.IGNORE:
        return OutputVerdict(name, kind, None, None, None)
    if kind == OutputKind.IDS:
        agreement = min(float(np.mean(r == o)) for r, o in zip(refs, outs, strict=True))
        return OutputVerdict(name, kind, agreement, None, None)
    if kind == OutputKind.PROBABILITIES:
        per_position = [1.0 - float(np.max(np.abs(r.astype(np.float64) - o))) for r, o in zip(refs, outs, strict=True)]
        # one probability per feed has no meaningful cosine: its sample figure is the absolute one too
        per_sample = [cosine(r, o) if r.size > 1 else p for r, o, p in zip(refs, outs, per_position, strict=True)]
        return OutputVerdict(name, kind, min(per_sample), min(per_position), None)
    worst_sample = min(cosine(r, o) for r, o in zip(refs, outs, strict=True))
    worst_slice: float | None = None
    top1: float | None = None
    if kind == OutputKind.DENSE_MAP:
        worst_slice = _worst(tile_cosines(r, o) for r, o in zip(refs, outs, strict=True))
    elif kind in (OutputKind.STEP_SCORES, OutputKind.STEP_FEATURES, OutputKind.ANCHORS):
        axis = judging.axis if judging.axis is not None else 1
        worst_slice = _worst(slice_cosines(r, o, axis) for r, o in zip(refs, outs, strict=True))
    if kind in (OutputKind.CLASS_SCORES, OutputKind.STEP_SCORES):
        top1 = float(np.mean([top1_agreement(r, o) for r, o in zip(refs, outs, strict=True)]))
    return OutputVerdict(name, kind, worst_sample, worst_slice, top1)


def _worst(per_feed: object) -> float | None:
    values = [float(v.min()) for v in per_feed if len(v)]  # type: ignore[attr-defined]
    return min(values) if values else None


def judge_outputs(
    names: Sequence[str],
    judgings: Sequence[OutputJudging],
    reference: list[list[np.ndarray]],
    candidate: list[list[np.ndarray]],
) -> FidelityVerdict:
    """Verdict over every output; `reference[i][j]` is output j on feed i."""
    if len(judgings) != len(names):
        judgings = [OutputJudging(OutputKind.STATE)] * len(names)  # unknown model: whole-tensor cosine only
    verdicts = []
    for j, (name, judging) in enumerate(zip(names, judgings, strict=True)):
        refs, outs = [feed[j] for feed in reference], [feed[j] for feed in candidate]
        float_output = refs[0].dtype.kind == "f"
        if not float_output and judging.kind not in (OutputKind.IDS, OutputKind.IGNORE):
            judging = OutputJudging(OutputKind.IDS)
        verdicts.append(judge_output(name, judging, refs, outs))
    return FidelityVerdict(verdicts, len(reference))


def judge_models(
    reference_path: Path,
    candidate_path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    judgings: Sequence[OutputJudging],
) -> FidelityVerdict:
    reference, candidate = make_session(reference_path), make_session(candidate_path)
    names = [o.name for o in reference.get_outputs()]
    candidate_names = [o.name for o in candidate.get_outputs()]
    if candidate_names != names:
        raise ValueError(f"the compressed model's outputs {candidate_names} differ from the input's {names}")
    return judge_outputs(names, judgings, run_all(reference, feeds), run_all(candidate, feeds))


# --- latency ------------------------------------------------------------------------------------------------


@dataclass
class LatencyComparison:
    ratio: float  # median of per-round candidate/reference ratios
    low: float  # bootstrap 95% interval of that median
    high: float
    rounds: int
    reference_ms: float
    candidate_ms: float
    converged: bool  # the interval got narrower than the target before the budget ran out


def bootstrap_median_interval(ratios: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(ratios, size=(BOOTSTRAP_RESAMPLES, len(ratios))), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def compare_latency(
    reference_path: Path,
    candidate_path: Path,
    feed: dict[str, np.ndarray],
    budget_s: float = 10.0,
    min_rounds: int = 12,
    max_rounds: int = 400,
    target_half_width: float = 0.02,
    threads: int = 1,
) -> LatencyComparison:
    """Interleaved ABBA rounds on one feed until the ratio's 95% interval is narrow or the budget is spent."""
    sessions = [make_session(reference_path, threads), make_session(candidate_path, threads)]
    for session in sessions:
        for _ in range(3):
            session.run(None, feed)
    times: list[list[float]] = [[], []]
    started = time.perf_counter()
    converged = False
    for round_index in range(max_rounds):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for which in order:
            t0 = time.perf_counter()
            sessions[which].run(None, feed)
            times[which].append(time.perf_counter() - t0)
        if round_index + 1 >= min_rounds and (round_index + 1) % 4 == 0:
            ratios = np.array(times[1]) / np.array(times[0])
            low, high = bootstrap_median_interval(ratios)
            if (high - low) / 2 <= target_half_width:
                converged = True
                break
            if time.perf_counter() - started > budget_s:
                break
    ratios = np.array(times[1]) / np.array(times[0])
    low, high = bootstrap_median_interval(ratios)
    return LatencyComparison(
        ratio=float(np.median(ratios)),
        low=low,
        high=high,
        rounds=len(ratios),
        reference_ms=1000 * float(np.median(times[0])),
        candidate_ms=1000 * float(np.median(times[1])),
        converged=converged,
    )
