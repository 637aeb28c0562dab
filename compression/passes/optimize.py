"""The `optimize` step: a budgeted search over prune sparsity, distillation and quantization.

The search itself is compression/optimize/; this adapter runs its candidates, times the ones within the
accuracy target against the step's input in one interleaved measurement, and returns the best that meets
the whole target (or the input, with the reason, when none does).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from compression.contract import CompressionPass, PassContext, PassResult
from compression.errors import CompressionError, JobCanceledError, JobInterrupted
from compression.optimize.config import OptimizeConfig
from compression.optimize.search import Candidate, chain, run_candidate
from compression.passes.registry import create_pass, register_pass

__all__ = ["OptimizeConfig", "OptimizePass"]


@register_pass
class OptimizePass(CompressionPass[OptimizeConfig]):
    config_model = OptimizeConfig

    def run(self, model_path: Path, ctx: PassContext) -> PassResult:
        config = self.config
        limit = min(config.max_seconds or math.inf, ctx.settings.optimize.max_seconds)
        evaluator = ctx.reference()
        started = time.monotonic()
        candidates: list[Candidate] = []
        notes: list[str] = []
        total = len(config.sparsities)
        for index, sparsity in enumerate(config.sparsities):
            if time.monotonic() - started > limit:
                notes.append(f"time limit of {limit:.0f} s reached: sparsities from {sparsity} on not tried")
                break
            ctx.progress(0.85 * index / total, f"optimize: candidate {index + 1}/{total} (sparsity {sparsity})")
            candidate = Candidate(sparsity=sparsity)
            steps, candidate.skipped = chain(config, sparsity, ctx.datasets.train is not None)
            try:
                run_candidate(
                    candidate, steps, model_path, ctx, ctx.scratch(f"candidate{index}"), create_pass, evaluator, config
                )
            except (JobCanceledError, JobInterrupted):
                raise
            except CompressionError as exc:
                candidate.error = exc.message
            except Exception as exc:  # one candidate's library failure must not sink the search
                candidate.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            candidates.append(candidate)
            ctx.event("optimize: candidate finished", **candidate.summary())
            if sparsity > 0 and candidate.verdict is not None and not candidate.verdict.ok:
                notes.append(f"sparsity {sparsity} misses the accuracy target: heavier sparsities not tried")
                break
        ctx.progress(0.9, "optimize: timing the candidates against the input")
        within = [c for c in candidates if c.path is not None and c.verdict is not None and c.verdict.ok]
        if within:
            # one interleaved measurement; it may stop once every interval is clear of the latency target
            decide_at = (config.target.latency_ratio,) if config.target.latency_ratio is not None else ()
            paths = [model_path, *(c.path for c in within)]
            comparison = evaluator.compare_latency(paths, ctx.check_canceled, decide_at)  # type: ignore[arg-type]
            for candidate, interval in zip(within, comparison.ratios, strict=True):
                candidate.latency_ratio = interval.ratio
                candidate.latency_interval = [interval.low, interval.high]
        metrics: dict[str, Any] = {
            "target": config.target.model_dump(),
            "candidates": [c.summary() for c in candidates],
            "notes": notes,
            "wall_time_s": round(time.monotonic() - started, 3),
        }
        meeting = [c for c in within if c.meets(config)]
        if not meeting:
            metrics["reason"] = "no candidate meets the target; returning the input model"
            metrics["input_model_returned"] = True
            ctx.event(metrics["reason"])
            return PassResult(model_path=None, metrics=metrics)
        key = (lambda c: c.latency_ratio or math.inf) if config.prefer == "latency" else (lambda c: c.size_ratio)
        best = min(meeting, key=key)
        metrics.update(chosen=candidates.index(best), chosen_sparsity=best.sparsity, input_model_returned=False)
        ctx.progress(1.0)
        return PassResult(model_path=best.path, metrics=metrics)
