"""Reference outputs of the job's input model, computed once and compared against every candidate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from compression.datasets import Dataset
from compression.metrics.fidelity import Fidelity, compare
from compression.metrics.inference import make_session, run_dataset
from compression.metrics.latency import LatencyComparison, LatencyStats
from compression.metrics.latency_cache import LatencyCache
from compression.settings import EngineSettings


class Evaluator:
    """`latency_cache`: share one between evaluators of a job so no pair of models is timed twice."""

    def __init__(
        self,
        reference_model: Path,
        dataset: Dataset,
        settings: EngineSettings,
        latency_cache: LatencyCache | None = None,
    ) -> None:
        self.dataset = dataset.take(settings.evaluation.max_samples)
        self.settings = settings
        self.latency_cache = latency_cache or LatencyCache()
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
            layout=self.dataset.layout,
        )

    def compare_latency(
        self,
        paths: Sequence[Path],
        check: Callable[[], None] | None = None,
        decide_at: Sequence[float] = (),
    ) -> LatencyComparison:
        """`paths[1:]` against `paths[0]`, interleaved and adaptive, on the eval data's first batch.

        Pairs already compared on this feed with these settings (same file contents) are not timed again.
        """
        return self.latency_cache.compare(
            paths, self.latency_feed(), self.settings.latency, self.latency_batch_size, check, decide_at
        )

    def latency(
        self, paths: list[Path], runs: int | None = None, check: Callable[[], None] | None = None
    ) -> list[LatencyStats]:
        """Per-model stats of `compare_latency` (`runs` lowers the round cap)."""
        if runs is not None and runs != self.settings.latency.runs:
            capped = self.settings.latency.model_copy(update={"runs": runs})
            return self.latency_cache.compare(paths, self.latency_feed(), capped, self.latency_batch_size, check).models
        return self.compare_latency(paths, check).models

    def latency_feed(self) -> dict[str, np.ndarray]:
        return self.dataset.first_feed(self.settings.latency.batch_size)

    @property
    def latency_batch_size(self) -> int:
        if self.dataset.layout == "stacked":
            return 1
        return min(self.settings.latency.batch_size, self.dataset.n_samples)
