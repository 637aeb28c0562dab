"""Calibration data for onnxruntime's static quantizer, collected in bounded memory.

onnxruntime's `quantize_static` runs its calibrator over every feed of the reader before reducing: the
histogram methods (entropy, percentile, distribution) keep every calibrated tensor of every sample, and
every method runs feeds of whatever batch the reader gives. On a 640x640 detector that is many GB. Here the
calibrator is fed in chunks whose activations fit `quant_activation_memory_mb` (measured per sample on the
model), statistics are merged after each chunk, and the ranges go to onnxruntime's calibration cache, which
`quantize_static` then reads instead of calibrating again. Histogram methods get their bins fixed from a
streamed min/max pass first, so merging chunks never re-bins (onnxruntime widens a histogram bin by bin when
a later chunk exceeds the first one's range).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import (
    HistogramCalibrater,
    HistogramCollector,
    TensorsData,
    create_calibrator,
    save_tensors_data,
)
from pydantic import BaseModel

from compression.contract import PassContext
from compression.datasets import Dataset
from compression.errors import MissingDatasetError
from compression.quantization.activations import activation_bytes_per_sample, lean_session
from compression.quantization.config import CalibrationMethodName, StaticQuantizeConfig
from compression.quantization.prepare import Prepared
from compression.synthetic import synthetic_dataset

CALIBRATION_BATCH = 32
HISTOGRAM_COPIES = 3  # onnxruntime's collector stacks, flattens and takes |x| of each chunk's tensors
MINMAX_CHUNK = 256  # samples per merge for min/max: it keeps two numbers per tensor and feed
MIN_RANGE = 1e-6  # smallest histogram range seeded for a tensor


class DatasetReader(CalibrationDataReader):
    """onnxruntime's reader protocol over the first `limit` samples of a dataset; rewindable for GPTQ."""

    def __init__(self, dataset: Dataset, limit: int, batch_size: int = CALIBRATION_BATCH) -> None:
        self.dataset = dataset.take(limit)
        self.batch_size = batch_size
        self._iter: Iterator[dict[str, np.ndarray]] = self._feeds()

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for feed, _ in self.dataset.batches(self.batch_size):
            yield feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._feeds()

    def __len__(self) -> int:
        step = self.batch_size if self.dataset.layout == "batched" else 1
        return -(-self.dataset.n_samples // step)

    def __deepcopy__(self, memo: dict) -> DatasetReader:  # GPTQ deep-copies the reader to iterate it
        return DatasetReader(self.dataset, self.dataset.n_samples, self.batch_size)


class CalibrationPlan(BaseModel):
    """How calibration is fed: per-sample activation bytes (measured), feed batch and samples per merge."""

    method: str
    samples: int
    batch: int
    chunk: int
    activation_bytes_per_sample: int
    memory_budget_bytes: int

    @property
    def chunks(self) -> int:
        return -(-self.samples // self.chunk)


def plan_calibration(
    model_path: Path, dataset: Dataset, limit: int, method: CalibrationMethod, budget_bytes: int, work: Path
) -> CalibrationPlan:
    """Batch and chunk sizes that keep the calibrator's tensors within `budget_bytes`."""
    data = dataset.take(limit)
    one = data.take(1)
    per_sample = activation_bytes_per_sample(model_path, one.first_feed(1), 1, work)
    fits = max(1, budget_bytes // per_sample)
    if method == CalibrationMethod.MinMax:
        chunk = max(min(fits, CALIBRATION_BATCH), MINMAX_CHUNK)  # the run's activations, not the kept ranges
        batch = min(fits, CALIBRATION_BATCH)
    else:
        # one feed per merge: onnxruntime stacks a chunk's feeds into one array, which needs equal shapes
        chunk = batch = min(max(1, budget_bytes // (HISTOGRAM_COPIES * per_sample)), CALIBRATION_BATCH)
    if data.layout == "stacked":
        batch = 1  # one complete input per feed
        if method != CalibrationMethod.MinMax:
            chunk = 1  # stacked samples may differ in shape (dynamic axes)
    return CalibrationPlan(
        method=method.name.lower(),
        samples=data.n_samples,
        batch=batch,
        chunk=min(chunk, data.n_samples),
        activation_bytes_per_sample=per_sample,
        memory_budget_bytes=budget_bytes,
    )


def calibrate(
    model_path: Path,
    dataset: Dataset,
    plan: CalibrationPlan,
    method: CalibrationMethod,
    op_types: list[str] | None,
    work: Path,
    cache_path: Path,
) -> None:
    """Compute activation ranges chunk by chunk and save them as onnxruntime's calibration cache."""
    work.mkdir(parents=True, exist_ok=True)
    data = dataset.take(plan.samples)
    if method == CalibrationMethod.MinMax:
        ranges = _minmax(model_path, data, plan, op_types, work / "minmax_augmented.onnx")
    else:
        ranges = _histogram(model_path, data, plan, method, op_types, work)
    save_tensors_data(ranges, cache_path)


def _collect_in_chunks(calibrator, data: Dataset, plan: CalibrationPlan) -> None:  # noqa: ANN001
    # onnxruntime's calibrator session (optimizations off, as it builds it) without the memory arena
    calibrator.infer_session = lean_session(Path(calibrator.augmented_model_path), optimize=False)
    for chunk in data.chunks(plan.chunk):
        calibrator.collect_data(DatasetReader(chunk, chunk.n_samples, plan.batch))


def _minmax(
    model_path: Path, data: Dataset, plan: CalibrationPlan, op_types: list[str] | None, augmented: Path
) -> TensorsData:
    calibrator = create_calibrator(
        model_path, op_types, augmented_model_path=str(augmented), calibrate_method=CalibrationMethod.MinMax
    )
    _collect_in_chunks(calibrator, data, plan)
    return calibrator.compute_data()


def _histogram(
    model_path: Path,
    data: Dataset,
    plan: CalibrationPlan,
    method: CalibrationMethod,
    op_types: list[str] | None,
    work: Path,
) -> TensorsData:
    calibrator = create_calibrator(
        model_path, op_types, augmented_model_path=str(work / "histogram_augmented.onnx"), calibrate_method=method
    )
    assert isinstance(calibrator, HistogramCalibrater)
    if plan.chunk < plan.samples:  # several merges: fix every tensor's bins from its global range first
        bounds = _minmax(model_path, data, plan, op_types, work / "minmax_augmented.onnx")
        calibrator.collector = _seeded_collector(calibrator, bounds)
    _collect_in_chunks(calibrator, data, plan)
    return calibrator.compute_data()


def _seeded_collector(calibrator: HistogramCalibrater, bounds: TensorsData) -> HistogramCollector:
    """A collector whose histograms already span each tensor's global range, so merges keep their bins."""
    collector = HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    absolute = calibrator.method == "percentile" and calibrator.symmetric
    for name in calibrator.tensors_to_calibrate or ():
        if name not in bounds:
            continue
        low, high = (np.asarray(v, dtype=np.float32).reshape(-1)[0] for v in bounds[name].range_value)
        bins = calibrator.num_bins
        top = np.float32(max(abs(low), abs(high), MIN_RANGE))  # distinct edges even for an all-zero tensor
        if absolute:
            edges = np.linspace(0.0, top, bins + 1, dtype=np.float32)
            collector.histogram_dict[name] = (np.zeros(bins, np.int64), edges, np.float32(np.inf), np.float32(-np.inf))
        else:
            threshold = top
            edges = np.linspace(-threshold, threshold, bins + 1, dtype=np.float32)
            collector.histogram_dict[name] = (
                np.zeros(bins, np.int64),
                edges,
                np.float32(np.inf),
                np.float32(-np.inf),
                np.asarray(threshold, dtype=np.float32),
            )
    return collector


CACHE_NAME = "calibration_ranges.json"


def ort_method(name: CalibrationMethodName) -> CalibrationMethod:
    """onnxruntime's member for a calibration method of the config (the one place the two enums meet)."""
    return {
        CalibrationMethodName.MINMAX: CalibrationMethod.MinMax,
        CalibrationMethodName.ENTROPY: CalibrationMethod.Entropy,
        CalibrationMethodName.PERCENTILE: CalibrationMethod.Percentile,
        CalibrationMethodName.DISTRIBUTION: CalibrationMethod.Distribution,
    }[CalibrationMethodName(name)]


def calibrate_into_cache(
    prepared: Prepared,
    dataset: Dataset,
    config: StaticQuantizeConfig,
    op_types: list[str] | None,
    ctx: PassContext,
    work: Path,
) -> DatasetReader:
    """Make `work/calibration_ranges.json` hold the ranges of `prepared`'s graph; returns a reader sized alike.

    Ranges depend on the graph and the op types, not on which nodes are excluded, so one calibration serves
    a whole budget search; a new graph (a quantizer fallback) or op-type set calibrates again.
    """
    method = ort_method(config.calibration_method)
    key = {"graph": str(prepared.path), "op_types": op_types, "method": config.calibration_method.value}
    key["samples"] = config.calibration_samples
    cache, key_file = work / CACHE_NAME, work / (CACHE_NAME + ".key")
    stored = json.loads(key_file.read_text()) if key_file.is_file() and cache.is_file() else None
    if stored is not None and stored["key"] == key:
        return DatasetReader(dataset, config.calibration_samples, stored["plan"]["batch"])
    cache.unlink(missing_ok=True)
    budget = ctx.settings.quantize.activation_memory_mb * 2**20
    plan = plan_calibration(prepared.path, dataset, config.calibration_samples, method, budget, work / "calibration")
    ctx.event(
        f"calibrating on {plan.samples} sample(s) in {plan.chunks} chunk(s) of {plan.chunk} (feeds of {plan.batch}); "
        f"{plan.activation_bytes_per_sample / 2**20:.1f} MB of activations per sample",
        **plan.model_dump(),
    )
    calibrate(prepared.path, dataset, plan, method, op_types, work / "calibration", cache)
    key_file.write_text(json.dumps({"key": key, "plan": plan.model_dump()}))
    prepared.details["calibration"] = plan.model_dump()
    return DatasetReader(dataset, config.calibration_samples, plan.batch)


def calibration_dataset(ctx: PassContext, model_path: Path, synthetic_ok: bool, purpose: str) -> tuple[Dataset, bool]:
    """The job's calibration data (or its train data); synthetic inputs only when the user opted in.

    Returns the dataset and whether it is synthetic, so the metrics can flag it.
    """
    for role in ("calibration", "train"):
        dataset = getattr(ctx.datasets, role)
        if dataset is not None:
            return dataset, False
    if not synthetic_ok:
        raise MissingDatasetError(
            f"{purpose} needs a 'calibration' (or 'train') dataset: upload one and name it in the job's datasets, "
            "or set synthetic_calibration: true to calibrate on random inputs (less accurate, flagged in metrics)"
        )
    ctx.event("calibrating on synthetic inputs drawn from the declared shapes (synthetic_calibration)")
    return synthetic_dataset(model_path, ctx.settings.synthetic_samples, ctx.settings.seed), True
