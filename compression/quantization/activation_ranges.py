"""Per-tensor activation ranges: the min-max range or a clipped one, whichever quantizes the tensor better.

Min-max keeps every calibration value representable, so one outlier stretches the uint8 step for all the
others; a percentile range clips the outliers and rounds the bulk finely. Neither wins everywhere (on the
PP-OCR classifier percentile 99.999 took top-1 agreement from 0.89 to 0.98, on tensors without outliers
it only adds clipping error), so each tensor gets the candidate with the smallest expected squared
error on its own calibration histogram:

    error(lo, hi) = (values inside) * step^2 / 12  +  sum over values outside of (distance to the range)^2

with `step = (hi - lo) / 255` (uniform rounding inside, clipping outside). Candidates are the min-max
range and ranges that drop a small fraction of the mass from both tails. Graph outputs and the inputs of
Softmax/ArgMax/TopK keep min-max: clipping the largest scores can tie the winner with the runner-up.

The min-max calibration (`calibration.calibrate_into_cache`) is refined in place: onnxruntime's cache of
MinMax ranges, which `quantize_static` then uses as is for every re-quantization of the search. The
histograms are streamed with the calibration's own feed size, so memory stays within its plan, and stop
once `quant_range_refinement_activation_mb` of intermediate tensors were histogrammed (at least one batch):
on a 800x608 detector (about 830 MB per sample) the pass cost 7 s per sample, while the tails it looks at
(1e-5 of a tensor's values) are already well sampled by one image's millions of values per tensor. The
min-max ranges themselves come from every calibration sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import (
    TensorData,
    TensorsData,
    create_calibrator,
    load_tensors_data,
    save_tensors_data,
)
from pydantic import BaseModel, Field

from compression.datasets import Dataset
from compression.metrics.inference import make_session
from compression.quantization.calibration import DatasetReader
from compression.quantization.sensitivity import expose

TAIL_FRACTIONS = (1e-5, 1e-4, 1e-3)  # mass dropped from each tail by the clipped candidates
BINS = 2048
LEVELS = 255
RANKING_CONSUMERS = frozenset({"Softmax", "LogSoftmax", "ArgMax", "ArgMin", "TopK"})


class RangeChoice(BaseModel):
    tensors: int = 0
    clipped: int = Field(0, description="tensors given a clipped range instead of min-max")
    protected: int = Field(0, description="graph outputs and scores kept at min-max")
    mean_error_ratio: float | None = Field(
        None, description="mean over clipped tensors of expected error (chosen range / min-max range)"
    )
    samples: int = Field(0, description="calibration samples histogrammed")
    capped: bool = Field(False, description="fewer samples than calibrated: the activation volume cap was reached")


def expected_error(hist: np.ndarray, centers: np.ndarray, lo: float, hi: float) -> float:
    """Expected squared quantization error of a histogram under an asymmetric 8-bit range [lo, hi]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # onnxruntime always keeps 0 representable
    step = (hi - lo) / LEVELS
    inside = (centers >= lo) & (centers <= hi)
    below, above = centers < lo, centers > hi
    clip = np.sum(hist[below] * (lo - centers[below]) ** 2) + np.sum(hist[above] * (centers[above] - hi) ** 2)
    return float(np.sum(hist[inside]) * step * step / 12.0 + clip)


def best_range(hist: np.ndarray, edges: np.ndarray) -> tuple[float, float, float]:
    """(lo, hi, error ratio vs min-max) of the candidate with the smallest expected error."""
    centers = (edges[:-1] + edges[1:]) / 2.0
    lo0, hi0 = float(edges[0]), float(edges[-1])
    base = expected_error(hist, centers, lo0, hi0)
    best = (lo0, hi0, base)
    cdf = np.cumsum(hist) / max(float(hist.sum()), 1.0)
    for tail in TAIL_FRACTIONS:
        left = int(np.searchsorted(cdf, tail))
        right = int(np.searchsorted(cdf, 1.0 - tail))
        lo = lo0 if left == 0 else float(edges[left])
        hi = hi0 if right >= len(hist) - 1 else float(edges[right + 1])
        if hi <= lo:
            continue
        error = expected_error(hist, centers, lo, hi)
        if error < best[2]:
            best = (lo, hi, error)
    return best[0], best[1], (best[2] / base if base > 0 else 1.0)


def protected_tensors(model: onnx.ModelProto) -> set[str]:
    names = {value.name for value in model.graph.output}
    names.update(node.input[0] for node in model.graph.node if node.op_type in RANKING_CONSUMERS and node.input)
    return names


def histograms(
    model_path: Path,
    ranges: dict[str, tuple[float, float]],
    dataset: Dataset,
    batch: int,
    threads: int,
    work: Path,
    max_bytes: int | None = None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """Signed histograms over each tensor's known min-max range, streamed batch by batch, and the samples used.

    With `max_bytes`, no batch starts once another batch of the same volume would pass it (one batch at least).
    """
    tapped = work / "range_tapped.onnx"
    wanted = sorted(expose(model_path, tapped, set(ranges)))
    graph_inputs = {value.name for value in onnx.load(str(model_path), load_external_data=False).graph.input}
    fed = sorted(set(ranges) & graph_inputs)
    counts = {name: np.zeros(BINS, np.float64) for name in [*wanted, *fed]}
    session = make_session(tapped, threads, arena=False)  # batches sized to the memory setting stay near it
    volume = 0
    samples = 0
    for feed, _ in dataset.batches(batch):
        rows = min(batch if dataset.layout == "batched" else 1, dataset.n_samples - samples)
        if max_bytes is not None and samples and volume + volume / samples * rows > max_bytes:
            break
        values = [*session.run(wanted, feed), *(feed[name] for name in fed)]
        volume += sum(np.asarray(value).nbytes for value in values)
        samples += rows
        for name, value in zip([*wanted, *fed], values, strict=True):
            value = np.asarray(value)
            if value.dtype.kind != "f" or value.size == 0:
                continue
            lo, hi = ranges[name]
            if hi <= lo:
                continue
            counts[name] += np.histogram(value.ravel(), bins=BINS, range=(lo, hi))[0]  # numpy bins in blocks
        del values
    tapped.unlink(missing_ok=True)
    found = {
        name: (hist, np.linspace(ranges[name][0], ranges[name][1], BINS + 1))
        for name, hist in counts.items()
        if hist.sum() > 0
    }
    return found, samples


def refine_ranges(
    cache_path: Path,
    model_path: Path,
    dataset: Dataset,
    batch: int,
    threads: int,
    work: Path,
    op_types: list[str] | None = None,
    max_bytes: int | None = None,
) -> RangeChoice | None:
    """Replace the min-max ranges in onnxruntime's calibration cache by each tensor's best range.

    Done once per cache: a marker beside it records the refined file, so the search's later attempts (which
    reuse the cache) do not refine again; None then. Without a cache yet, min-max ranges are calibrated
    first with onnxruntime's calibrator (the same one `quantize_static` would run). `max_bytes` caps the
    intermediate tensors histogrammed (`histograms`).
    """
    marker = cache_path.with_name(cache_path.name + ".refined")
    if cache_path.is_file() and marker.is_file() and marker.read_text() == _fingerprint(cache_path):
        return None
    if not cache_path.is_file():
        _calibrate_minmax(model_path, cache_path, dataset, batch, op_types, work)
    minmax = load_tensors_data(cache_path)
    if minmax.calibration_method != CalibrationMethod.MinMax:
        return None
    work.mkdir(parents=True, exist_ok=True)
    ranges = {name: _range(minmax[name]) for name in minmax}
    protected = protected_tensors(onnx.load(str(model_path), load_external_data=False))
    eligible = {n: r for n, r in ranges.items() if r is not None and n not in protected}
    found, samples = histograms(model_path, eligible, dataset, batch, threads, work, max_bytes)
    report = RangeChoice(
        tensors=len(ranges),
        protected=len(protected & set(ranges)),
        samples=samples,
        capped=samples < dataset.n_samples,
    )
    chosen: dict[str, TensorData] = {}
    ratios: list[float] = []
    for name, data in minmax.data.items():
        if name in found:
            hist, edges = found[name]
            lo, hi, ratio = best_range(hist, edges)
            if (lo, hi) != ranges[name]:
                low, high = np.asarray(data.lowest), np.asarray(data.highest)
                data = TensorData(
                    lowest=np.full(low.shape, lo, dtype=low.dtype), highest=np.full(high.shape, hi, dtype=high.dtype)
                )
                report.clipped += 1
                ratios.append(ratio)
        chosen[name] = data
    report.mean_error_ratio = float(np.mean(ratios)) if ratios else None
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, chosen), cache_path)
    marker.write_text(_fingerprint(cache_path))
    return report


def _calibrate_minmax(
    model_path: Path, cache_path: Path, dataset: Dataset, batch: int, op_types: list[str] | None, work: Path
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    calibrator = create_calibrator(
        model_path,
        op_types or [],
        augmented_model_path=str(work / "minmax_augmented.onnx"),
        calibrate_method=CalibrationMethod.MinMax,
        providers=["CPUExecutionProvider"],
    )
    calibrator.collect_data(DatasetReader(dataset, dataset.n_samples, batch))
    save_tensors_data(calibrator.compute_data(), cache_path)


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _range(data: TensorData) -> tuple[float, float] | None:
    """A per-tensor (scalar) range; None for per-channel ranges, which keep min-max."""
    lo, hi = (np.asarray(v) for v in data.range_value)
    if lo.size != 1 or hi.size != 1:
        return None
    return float(lo.reshape(())), float(hi.reshape(()))
