"""Reference outputs of the job's input model, computed once and compared against every candidate.

Memory is bounded by the eval settings: the batch shrinks so one batch's intermediate tensors fit
`eval_activation_memory_mb`, and the samples are capped so one model's outputs fit `eval_max_output_mb`
(both measured per sample on the reference model, `metrics.activation_size`). A 640x640 detector with
256-sample batches would otherwise hold GBs of activations per run.

`fidelity` is remembered per file content (a digest): the pipeline's step fidelity of the model a quantize
search already judged (the same file, moved to the step's output) is not computed again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from compression.datasets import Dataset
from compression.metrics.activation_size import ActivationSize, activation_size
from compression.metrics.fidelity import Fidelity, compare
from compression.metrics.inference import make_session, run_dataset
from compression.metrics.latency import LatencyComparison, LatencyStats
from compression.metrics.latency_cache import LatencyCache, file_digest
from compression.metrics.output_heads import score_head_outputs
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
        self.settings = settings
        self.latency_cache = latency_cache or LatencyCache()
        self.size: ActivationSize | None = None
        self.memory_batch: int | None = None  # samples whose activations fit eval_activation_memory_mb
        self.dataset, self.batch_size = self._plan(reference_model, dataset.take(settings.evaluation.max_samples))
        self.score_heads = score_head_outputs(reference_model)  # per-step logits are judged by their argmax
        self.reference_outputs = self.outputs(reference_model)
        self.fidelity_computed = 0  # models actually run by `fidelity` (the others were remembered)
        self._fidelity: dict[str, Fidelity] = {}

    def _plan(self, model: Path, dataset: Dataset) -> tuple[Dataset, int]:
        """Eval samples and batch within the eval memory settings (measured on one sample of the model)."""
        knobs = self.settings.evaluation
        if dataset.n_samples <= 1:
            return dataset, knobs.batch_size
        self.size = activation_size(model, dataset.take(1).first_feed(1))
        samples = max(1, min(dataset.n_samples, knobs.max_output_mb * 2**20 // self.size.outputs))
        self.memory_batch = max(1, knobs.activation_memory_mb * 2**20 // self.size.activations)
        return dataset.take(samples), min(knobs.batch_size, self.memory_batch)

    @property
    def memory_bound(self) -> bool:
        """The eval batch was shrunk for memory: sessions run without onnxruntime's arena."""
        return self.memory_batch is not None and self.memory_batch < self.settings.evaluation.batch_size

    def outputs(self, model_path: Path) -> dict[str, np.ndarray]:
        session = make_session(model_path, self.settings.latency.threads, arena=not self.memory_bound)
        return run_dataset(session, self.dataset, self.batch_size, ragged=True)

    def fidelity(self, model_path: Path) -> Fidelity:
        """The model's outputs compared with the reference; a file content judged before is not run again."""
        key = file_digest(model_path)
        known = self._fidelity.get(key)
        if known is None:
            known = self._fidelity[key] = self.compare_outputs(self.outputs(model_path))
            self.fidelity_computed += 1
        return known.model_copy(deep=True)

    def compare_outputs(self, outputs: dict[str, np.ndarray]) -> Fidelity:
        return compare(
            self.reference_outputs,
            outputs,
            n_samples=self.dataset.n_samples,
            labels=self.dataset.labels,
            synthetic=self.dataset.synthetic,
            layout=self.dataset.layout,
            score_heads=self.score_heads,
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
        return self.dataset.first_feed(self.latency_batch_size)

    @property
    def latency_batch_size(self) -> int:
        """`latency_batch_size`, fewer when one batch's activations would pass eval_activation_memory_mb."""
        if self.dataset.layout == "stacked":
            return 1
        return min(
            self.settings.latency.batch_size, self.dataset.n_samples, self.memory_batch or self.dataset.n_samples
        )
