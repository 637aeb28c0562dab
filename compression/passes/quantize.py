"""The `quantize` step: dynamic, static, weight-only, fp16 and auto, never returning a regression.

Every mode runs the same loop (compression/quantization/search.py): quantize, load and run the
result, check the budget, keep the most sensitive nodes in float until it holds. When no quantized
model meets the budget, or its latency interval says it is clearly slower than the input, the step
returns its input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compression.contract import CompressionPass, PassContext, PassResult
from compression.metrics.evaluation import Evaluator
from compression.passes.registry import register_pass
from compression.quantization.auto import run_auto
from compression.quantization.budget import step_budget
from compression.quantization.config import (
    AutoQuantizeConfig,
    DynamicQuantizeConfig,
    Fp16QuantizeConfig,
    ModeConfig,
    Objective,
    QuantizeBase,
    QuantizeConfig,
    StaticQuantizeConfig,
    WeightOnlyQuantizeConfig,
)
from compression.quantization.modes import make_quantizer
from compression.quantization.search import BudgetSearch
from compression.quantization.speed import SpeedVerdict, latency_facts, measure_candidates, speed_verdict

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
    dataset = reference.dataset.take(ctx.settings.quantize.eval_samples)
    return Evaluator(model_path, dataset, ctx.settings, latency_cache=reference.latency_cache)


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
        budget = step_budget(config.max_accuracy_drop, config.budget_metric, ctx.settings, evaluator)
        result = BudgetSearch(make_quantizer(config, ctx, work), ctx, evaluator, budget, f"quantize_{config.mode}").run(
            model_path
        )
        metrics: dict[str, Any] = {**result.summary(), "budget": budget.model_dump()}
        if not result.ok:
            metrics["reason"] = "the quantized model is outside the budget even with nodes kept in float: " + "; ".join(
                result.best.verdict.reasons
            )
            return None, metrics
        assert result.best.path is not None
        if config.speed_guard:
            ctx.progress(0.9, "timing the quantized model against the input")
            objective = config.objective
            comparison = measure_candidates(
                model_path, [result.best.path], evaluator, objective, ctx.settings, ctx.check_canceled
            )
            base, interval = comparison.models[0], comparison.ratios[0]
            metrics.update(input_latency_ms=base.median_ms, objective=objective.value)
            metrics.update(latency_facts(base, comparison.models[1], interval, ctx.settings))
            metrics["latency_measurement"] = comparison.summary()
            verdict = speed_verdict(interval, ctx.settings)
            if verdict == SpeedVerdict.SLOWER:
                metrics["reason"] = (
                    f"the quantized model is clearly slower than the input (latency {interval.text()}, the whole "
                    f"interval above {ctx.settings.latency.slowdown_tolerance}); returning the input model "
                    "(set speed_guard: false to get it anyway)"
                )
                return None, metrics
            if objective == Objective.LATENCY and verdict != SpeedVerdict.FASTER:
                metrics["reason"] = (
                    f"objective 'latency': the quantized model is not clearly faster than the input (latency "
                    f"{interval.text()}, {verdict.value}); returning the input model"
                )
                return None, metrics
        return result.best.path, metrics
