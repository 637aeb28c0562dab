"""The `quantize` step: dynamic, static, weight-only, fp16 and auto, never returning a regression.

Every mode runs the same loop (compression/quantization/search.py): quantize, load and run the
result, check the budget, keep the most sensitive nodes in float until it holds. When no quantized
model meets the budget, or it is slower than the input, the step returns a copy of its input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compression.contract import CompressionPass, PassContext, PassResult
from compression.metrics.evaluation import Evaluator
from compression.passes.registry import register_pass
from compression.quantization.auto import run_auto
from compression.quantization.budget import Budget
from compression.quantization.config import (
    AutoQuantizeConfig,
    DynamicQuantizeConfig,
    Fp16QuantizeConfig,
    ModeConfig,
    QuantizeBase,
    QuantizeConfig,
    StaticQuantizeConfig,
    WeightOnlyQuantizeConfig,
)
from compression.quantization.modes import make_quantizer
from compression.quantization.search import BudgetSearch
from compression.quantization.speed import confirmed_ratio, interleaved_latency

__all__ = [
    "AutoQuantizeConfig",
    "DynamicQuantizeConfig",
    "Fp16QuantizeConfig",
    "QuantizeBase",
    "QuantizeConfig",
    "QuantizePass",
    "StaticQuantizeConfig",
    "WeightOnlyQuantizeConfig",
]


def step_evaluator(model_path: Path, ctx: PassContext) -> Evaluator:
    """Reference outputs of this step's input on the job's eval data (synthetic inputs without it)."""
    reference = ctx.reference()
    if model_path == ctx.original_model and reference.dataset.n_samples <= ctx.settings.quantize.eval_samples:
        return reference
    return Evaluator(model_path, reference.dataset.take(ctx.settings.quantize.eval_samples), ctx.settings)


@register_pass
class QuantizePass(CompressionPass[ModeConfig | AutoQuantizeConfig]):
    config_model = QuantizeConfig

    def run(self, model_path: Path, ctx: PassContext) -> PassResult:
        config = self.config
        ctx.progress(0.02, f"quantize ({config.mode})")
        evaluator = step_evaluator(model_path, ctx)
        work = ctx.scratch("quantizer")
        if isinstance(config, AutoQuantizeConfig):
            chosen, metrics = run_auto(model_path, config, ctx, evaluator, work)
        else:
            chosen, metrics = self._run_mode(model_path, config, ctx, evaluator, work)
        ctx.progress(1.0)
        metrics["input_model_returned"] = chosen is None
        if chosen is None:
            ctx.event(metrics["reason"])
        return PassResult(model_path=chosen, metrics=metrics)

    def _run_mode(
        self, model_path: Path, config: ModeConfig, ctx: PassContext, evaluator: Evaluator, work: Path
    ) -> tuple[Path | None, dict[str, Any]]:
        budget = Budget.from_settings(config.max_accuracy_drop, ctx.settings)
        result = BudgetSearch(make_quantizer(config, ctx, work), ctx, evaluator, budget, f"quantize_{config.mode}").run(
            model_path
        )
        metrics: dict[str, Any] = {**result.summary(), "budget": budget.model_dump()}
        if not result.ok:
            metrics["reason"] = "the quantized model is outside the budget even with nodes kept in float: " + "; ".join(
                result.best.verdict.reasons
            )
            return None, metrics
        if config.speed_guard:
            ctx.progress(0.9, "checking the quantized model is not slower")
            before, after = interleaved_latency([model_path, result.best.path], evaluator, ctx.settings)
            ratio = after.median_ms / before.median_ms
            metrics.update(input_latency_ms=before.median_ms, latency_ms=after.median_ms, latency_ratio=ratio)
            if ratio > ctx.settings.latency.slowdown_tolerance:
                ratio = confirmed_ratio(model_path, result.best.path, evaluator, ctx.settings)
                metrics["latency_ratio_confirmed"] = ratio
            if ratio > ctx.settings.latency.slowdown_tolerance:
                metrics["reason"] = (
                    f"the quantized model is slower than the input ({ratio:.2f}x latency); returning the input "
                    "model (set speed_guard: false to get it anyway)"
                )
                return None, metrics
        return result.best.path, metrics
