"""Feeds onnxruntime's calibrators from a job dataset, or from synthetic inputs when the user opts in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from compression.contract import PassContext
from compression.datasets import Dataset
from compression.errors import MissingDatasetError
from compression.model_info import inspect_model

CALIBRATION_BATCH = 32


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

    def __deepcopy__(self, memo: dict) -> DatasetReader:  # GPTQ deep-copies the reader to iterate it
        return DatasetReader(self.dataset, self.dataset.n_samples, self.batch_size)


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
    inputs = inspect_model(model_path).inputs
    ctx.event("calibrating on synthetic inputs drawn from the declared shapes (synthetic_calibration)")
    return Dataset.synthetic_for(inputs, ctx.settings.synthetic_samples, ctx.settings.seed), True
