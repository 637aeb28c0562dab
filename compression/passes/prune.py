"""The `prune` step: magnitude and N:M zeroing, or structured channel removal that shrinks the graph.

The configs live in compression/pruning/config.py; this adapter runs the method and measures its result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compression.contract import CompressionPass, PassContext, PassResult
from compression.datasets import Dataset
from compression.metrics.activation_size import memory_batch
from compression.metrics.macs import count_macs
from compression.metrics.model_stats import gzip_size, model_stats
from compression.passes.registry import register_pass
from compression.pruning.allocation import allocation_limits
from compression.pruning.batchnorm import recalibrate_batchnorm
from compression.pruning.config import (
    MagnitudePruneConfig,
    NMPruneConfig,
    PruneConfig,
    StructuredPruneConfig,
)
from compression.pruning.reconstruction import reconstruction_limits
from compression.pruning.speed import PruneSpeed, SpeedBudget, choose, interval_facts, prune_speed
from compression.pruning.structured import structured_prune
from compression.pruning.unstructured import unstructured_prune


def _facts(path: Path) -> dict[str, int]:
    return {**model_stats(path), "gzip_bytes": gzip_size(path), "macs": count_macs(path)["macs"]}


@register_pass
class PrunePass(CompressionPass[MagnitudePruneConfig | NMPruneConfig | StructuredPruneConfig]):
    config_model = PruneConfig

    def run(self, model_path: Path, ctx: PassContext) -> PassResult:
        config = self.config
        out = ctx.output()
        ctx.progress(0.05, f"prune ({config.method})")
        before = _facts(model_path)
        details: dict[str, Any]
        batch_size: int | None = None  # runs on the calibration data: sized once, on the input model
        if isinstance(config, StructuredPruneConfig):
            dataset = ctx.datasets.calibration or ctx.datasets.train  # also feeds the analysis' shape run
            if config.importance == "activation" or config.bias_compensation:
                purpose = "activation importance" if config.importance == "activation" else "bias compensation"
                dataset = ctx.require("calibration", "train", purpose=f"structured pruning with {purpose}")
            batch_size = self._batch(model_path, dataset, ctx)
            details = self._structured(model_path, out, config, dataset, batch_size, ctx)
            changed = details["channels_removed"] > 0
            for skipped in details["skipped"]:
                ctx.event("group left unpruned", **skipped)
        else:
            details = unstructured_prune(
                model_path,
                out,
                method=config.method,
                sparsity=getattr(config, "sparsity", None) or 0.0,
                scope=getattr(config, "scope", "global"),
                n=getattr(config, "n", 2),
                m=getattr(config, "m", 4),
                exclude=config.exclude,
                skip_first_last=config.skip_first_last,
            )
            changed = details["achieved_sparsity"] > 0
        ctx.check_canceled()
        details["batchnorm_recalibrated"] = self._recalibrate(out, ctx, changed, batch_size)
        ctx.progress(0.9, "measuring the pruned model")
        after = _facts(out)
        metrics = {"method": config.method, **details, "before": before, "after": after}
        metrics["parameter_ratio"] = after["parameters"] / before["parameters"] if before["parameters"] else None
        metrics["macs_ratio"] = after["macs"] / before["macs"] if before["macs"] else None
        return PassResult(model_path=out if changed else None, metrics=metrics)

    def _structured(
        self,
        model_path: Path,
        out: Path,
        config: StructuredPruneConfig,
        dataset: Dataset | None,
        batch_size: int,
        ctx: PassContext,
    ) -> dict[str, Any]:
        def prune(destination: Path, round_to: int) -> dict[str, Any]:
            return structured_prune(
                model_path,
                destination,
                sparsity=config.sparsity,
                importance=config.importance,
                round_to=round_to,
                min_channels=ctx.settings.prune.min_channels,
                exclude=config.exclude,
                dataset=dataset,
                batch_size=batch_size,
                max_samples=ctx.settings.prune.activation_samples,
                check_canceled=ctx.check_canceled,
                bias_compensation=config.bias_compensation,
                reconstruction=reconstruction_limits(ctx.settings) if config.reconstruct else None,
                allocation=allocation_limits(ctx.settings) if config.allocation == "sensitivity" else None,
            )

        details = prune(out, config.round_to)
        if not config.speed_check or details["channels_removed"] == 0:
            return details
        ctx.progress(0.5, "timing the pruned model against its input")
        budget = SpeedBudget(ctx.reference(), ctx.settings, ctx.check_canceled)
        first = budget.compare(model_path, [out]).ratios[0]
        details.update(interval_facts(first, ctx.settings))
        verdict = prune_speed(first, ctx.settings)
        if verdict != PruneSpeed.SLOWER or config.round_to != 1:
            details["speed_check_s"] = budget.elapsed
            return details
        # Odd channel counts can miss onnxruntime's blocked kernels: try multiples that hit them, time permitting.
        tries: dict[int, Path] = {}
        candidates: dict[int, dict[str, Any]] = {}
        for round_to in ctx.settings.prune.round_to_candidates:
            if not budget.can_measure():
                break
            tries[round_to] = ctx.new_model_path(f"prune_round{round_to}")
            candidates[round_to] = prune(tries[round_to], round_to)
        if not tries or not budget.can_measure():
            ctx.event("pruned model is clearly slower than its input; no time left in prune_speed_check_seconds "
                      "to retry channel multiples", **interval_facts(first, ctx.settings))  # fmt: skip
            details["speed_check_s"] = budget.elapsed
            details["round_to_tried"] = [1]
            return details
        comparison = budget.compare(model_path, [out, *tries.values()])
        options = list(zip([1, *tries], comparison.ratios, strict=True))
        round_to, interval = choose(options, ctx.settings)
        if round_to != 1:
            tries[round_to].replace(out)
        ctx.event(
            "pruned model was clearly slower than its input; retried with channel multiples",
            tried={str(k): round(v.ratio, 3) for k, v in options},
            chosen_round_to=round_to,
        )
        if prune_speed(interval, ctx.settings) == PruneSpeed.SLOWER:
            ctx.event("every tried channel multiple is clearly slower than the input", latency_ratio=interval.ratio)
        chosen = details if round_to == 1 else candidates[round_to]
        return {
            **chosen,
            **interval_facts(interval, ctx.settings),
            "round_to_used": round_to,
            "round_to_tried": [k for k, _ in options],
            "speed_check_s": budget.elapsed,
        }

    def _recalibrate(self, path: Path, ctx: PassContext, changed: bool, batch_size: int | None) -> list[str] | str:
        """BatchNorm names re-estimated, or why none were."""
        if not self.config.recalibrate_batchnorm or not changed:
            return "off" if not self.config.recalibrate_batchnorm else "not needed (nothing pruned)"
        dataset = ctx.datasets.calibration or ctx.datasets.train
        if dataset is None:
            ctx.event("BatchNorm statistics kept: give a calibration or train dataset to re-estimate them")
            return "skipped (needs a calibration or train dataset)"
        ctx.progress(0.7, "re-estimating BatchNorm statistics")
        if batch_size is None:  # unstructured: sized here, on the pruned model (same shapes as the input)
            batch_size = self._batch(path, dataset, ctx)
        return recalibrate_batchnorm(
            path, dataset, batch_size, ctx.settings.prune.activation_samples, ctx.check_canceled
        )

    @staticmethod
    def _batch(model_path: Path, dataset: Dataset | None, ctx: PassContext) -> int:
        """Samples per run of the model on the calibration data (importance statistics, allocation trials, BatchNorm
        statistics): eval_batch_size, fewer when one batch's tensors would pass eval_activation_memory_mb (a
        640x640 detector: one page per run; 64 pages in one run would hold ~40 GB). A pruned model's tensors are
        smaller than its input's, so the input's batch serves both."""
        knobs = ctx.settings.evaluation
        if dataset is None:
            return knobs.batch_size
        return memory_batch(model_path, dataset, knobs.activation_memory_mb, knobs.batch_size)
