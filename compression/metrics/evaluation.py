"""Reference outputs of the job's input model, computed once and compared against every candidate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from compression.datasets import Dataset
from compression.metrics.fidelity import Fidelity, compare
from compression.metrics.inference import make_session, run_dataset
from compression.metrics.latency import LatencyStats, measure_latency
from compression.settings import EngineSettings


class Evaluator:
    def __init__(self, reference_model: Path, dataset: Dataset, settings: EngineSettings) -> None:
        self.dataset = dataset.take(settings.evaluation.max_samples)
        self.settings = settings
        self.reference_outputs = self.outputs(reference_model)

    def outputs(self, model_path: Path) -> dict[str, np.ndarray]:
        session = make_session(model_path, self.settings.latency.threads)
        return run_dataset(session, self.dataset, self.settings.evaluation.batch_size)

    def fidelity(self, model_path: Path) -> Fidelity:
        return self.compare_outputs(self.outputs(model_path))

    def compare_outputs(self, outputs: dict[str, np.ndarray]) -> Fidelity:
        return compare(
            self.reference_outputs,
            outputs,
            n_samples=self.dataset.n_samples,
            labels=self.dataset.labels,
            synthetic=self.dataset.synthetic,
        )

    def latency(
        self, paths: list[Path], runs: int | None = None, check: Callable[[], None] | None = None
    ) -> list[LatencyStats]:
        """Interleaved latency of `paths` on the eval data's first batch, with the shared thread settings."""
        return measure_latency(
            paths,
            self.latency_feed(),
            runs=runs or self.settings.latency.runs,
            warmup=self.settings.latency.warmup,
            threads=self.settings.latency.threads,
            batch_size=self.latency_batch_size,
            check=check,
        )

    def latency_feed(self) -> dict[str, np.ndarray]:
        return self.dataset.first_feed(self.settings.latency.batch_size)

    @property
    def latency_batch_size(self) -> int:
        if self.dataset.layout == "stacked":
            return 1
        return min(self.settings.latency.batch_size, self.dataset.n_samples)
