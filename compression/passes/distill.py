"""The `distill` step: retrain the student graph's weights against the job's original model (the teacher).

torch is imported only inside `run`, so the engine and the service start without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from compression.contract import CompressionPass, PassContext, PassResult
from compression.metrics.latency import measure_latency
from compression.metrics.model_stats import model_stats
from compression.passes.registry import register_pass
from compression.training.config import DistillConfig, Hint

__all__ = ["DistillConfig", "DistillPass", "Hint"]


@register_pass
class DistillPass(CompressionPass[DistillConfig]):
    config_model = DistillConfig

    def run(self, model_path: Path, ctx: PassContext) -> PassResult:
        config = self.config
        train = ctx.require("train", purpose="distillation")
        student_path = model_path if config.student == "current" else ctx.resolve_model(config.student)
        ctx.progress(0.0, "distill: teacher targets")
        from compression.training.distiller import distill  # lazy: torch loads only when a distill step runs

        outcome = distill(ctx.original_model, student_path, train, ctx.datasets.eval, config, ctx.settings, ctx)
        out = ctx.output()
        onnx.save(outcome.model, str(out))
        ctx.check_canceled()
        ctx.progress(0.92, "distill: measure teacher and student")
        # the current model kept (no epoch beat it, or the guard found the trained weights no better): unchanged
        changed = not outcome.kept_input or config.student != "current"
        metrics = _metrics(ctx, config.student, student_path, out, outcome)
        if outcome.kept_input:
            reason = outcome.guard.reason if outcome.guard is not None else "no epoch beat the input's weights"
            metrics["returned"], metrics["reason"] = "input", reason
            ctx.event("distill: the input is returned unchanged", reason=reason)
        else:
            metrics["returned"] = "trained"
        return PassResult(model_path=out if changed else None, metrics=metrics)


def _metrics(ctx: PassContext, student: str, student_path: Path, out: Path, outcome: Any) -> dict[str, Any]:
    """Teacher vs student (before and after): size, parameters, latency, accuracy, agreement, loss curve."""
    reference = ctx.reference()
    settings = ctx.settings
    before, after = reference.fidelity(student_path), reference.fidelity(out)
    teacher_latency, student_latency = measure_latency(
        [ctx.original_model, out],
        reference.latency_feed(),
        runs=settings.latency.runs,
        warmup=settings.latency.warmup,
        threads=settings.latency.threads,
        batch_size=reference.latency_batch_size,
    )
    teacher_stats, student_stats = model_stats(ctx.original_model), model_stats(out)
    epochs = outcome.history[1:]
    return {
        "student": student,
        "teacher": {**teacher_stats, "latency_ms": teacher_latency.median_ms, "accuracy": _acc(after, "input")},
        "student_before": {"accuracy": _acc(before, "output"), "top1_agreement": before.top1_agreement},
        "student_after": {
            **student_stats,
            "latency_ms": student_latency.median_ms,
            "accuracy": _acc(after, "output"),
            "top1_agreement": after.top1_agreement,
        },
        "ratios": {
            "size": student_stats["size_bytes"] / teacher_stats["size_bytes"],
            "parameters": student_stats["parameters"] / max(teacher_stats["parameters"], 1),
            "latency": student_latency.median_ms / teacher_latency.median_ms if teacher_latency.median_ms else None,
        },
        "best_epoch": outcome.best_epoch,
        "best_step": outcome.best_step,
        "steps": outcome.steps,
        "checks": [
            {"epoch": c.epoch, "step": c.step, "eval_loss": c.eval_loss, "seconds": round(c.seconds, 2)}
            for c in outcome.checks
        ],
        "fresh_copies": outcome.fresh_copies,
        "backoffs": outcome.backoffs,
        "selected_by": outcome.selected_by,
        "eval_metric": outcome.metric_name,
        "selected_on": outcome.eval_on,
        "losses": outcome.losses,
        "auto_hints": outcome.auto_hints,
        "trainable_parameters": outcome.trainable_parameters,
        "loss_curve": [
            {"epoch": r.epoch, "train_loss": r.train_loss, "eval_loss": r.eval_loss, "eval_metric": r.eval_metric}
            for r in outcome.history
        ],
        "seconds_per_epoch": sum(r.seconds for r in epochs) / len(epochs) if epochs else 0.0,
        "lr": outcome.lr,
        "train_samples": {"given": outcome.given_samples, "with_augmented": outcome.train_samples},
        "stopped_early": outcome.stopped_early,
        "guard": outcome.guard.as_metrics() if outcome.guard is not None else None,
        "qat": {"weights": outcome.qat_weights, "learned_scales": outcome.learned_scales},
    }


def _acc(fidelity: Any, side: str) -> float | None:
    return getattr(fidelity.accuracy, side) if fidelity.accuracy is not None else None
