"""Candidates for the optimize step: prune at one sparsity, distill, quantize; each judged against the input.

Every candidate is a small pipeline of registered passes run in its own folder under the step's scratch dir,
with the same contract as the job's pipeline (output paths, scratch dirs). Candidates run from the lightest
sparsity to the heaviest; one that misses the accuracy target ends the search (heavier ones would miss it too).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from compression.contract import PassContext, StepConfig, adopt_output
from compression.metrics.evaluation import Evaluator
from compression.metrics.fidelity import Fidelity
from compression.optimize.config import OptimizeConfig
from compression.pruning.config import StructuredPruneConfig
from compression.quantization.budget import Budget, Verdict, judge
from compression.quantization.config import AutoQuantizeConfig
from compression.training.config import DistillConfig
from compression.training.qat import find_qat_weights

CreatePass = Callable[[StepConfig], Any]


@dataclass
class Candidate:
    sparsity: float
    steps: list[str] = field(default_factory=list)
    path: Path | None = None
    verdict: Verdict | None = None
    latency_ratio: float | None = None  # median per-round ratio of the interleaved measurement
    latency_interval: list[float] | None = None  # its confidence interval
    size_ratio: float | None = None
    wall_time_s: float = 0.0
    skipped: list[str] = field(default_factory=list)
    error: str | None = None

    def meets(self, config: OptimizeConfig) -> bool:
        target = config.target
        return (
            self.path is not None
            and self.verdict is not None
            and self.verdict.ok
            and (target.latency_ratio is None or (self.latency_ratio or 0.0) <= target.latency_ratio)
            and (target.size_ratio is None or (self.size_ratio or 0.0) <= target.size_ratio)
        )

    def summary(self) -> dict[str, Any]:
        verdict = self.verdict
        return {
            "sparsity": self.sparsity,
            "steps": self.steps,
            "skipped": self.skipped,
            "within_accuracy_target": verdict.ok if verdict else False,
            "accuracy_metric": verdict.metric if verdict else None,
            "drop": verdict.drop if verdict else None,
            "reasons": verdict.reasons if verdict else [],
            "latency_ratio": self.latency_ratio,
            "latency_interval": self.latency_interval,
            "size_ratio": self.size_ratio,
            "wall_time_s": round(self.wall_time_s, 3),
            "error": self.error,
        }


def chain(config: OptimizeConfig, sparsity: float, has_train: bool) -> tuple[list[StepConfig], list[str]]:
    """The steps one candidate runs, and the ones it skips with the reason."""
    steps: list[StepConfig] = []
    skipped: list[str] = []
    if sparsity > 0:
        steps.append(
            StructuredPruneConfig(
                method="structured", sparsity=sparsity, importance=config.importance, round_to=config.round_to
            )
        )
        if config.distill_epochs and has_train:
            steps.append(DistillConfig(epochs=config.distill_epochs, lr=config.distill_lr))
        elif config.distill_epochs:
            skipped.append("distill: the job has no train dataset")
    if config.quantize:
        steps.append(AutoQuantizeConfig(mode="auto", max_accuracy_drop=config.target.max_accuracy_drop))
        if config.qat_epochs and has_train:
            steps.append(DistillConfig(epochs=config.qat_epochs, lr=config.qat_lr, alpha=0.5, qat="auto"))
        elif config.qat_epochs:
            skipped.append("distill (QAT): the job has no train dataset")
    return steps, skipped


def is_qat(steps: list[StepConfig], index: int) -> bool:
    """A distill step after a quantize step: quantization-aware fine-tuning of the quantized model."""
    return isinstance(steps[index], DistillConfig) and any(isinstance(s, AutoQuantizeConfig) for s in steps[:index])


def trainable_qdq(path: Path) -> bool:
    """The model has integer weights read by DequantizeLinear (a QDQ graph QAT can train)."""
    return find_qat_weights(onnx.load(str(path), load_external_data=False).graph).active


def judge_against_input(fidelity: Fidelity, max_drop: float | None, ctx: PassContext) -> Verdict:
    """With labels the target is the accuracy drop alone: a pruned, retrained model may move its logits
    (lower output cosine) while classifying as well. Without labels the quantize budget's floors apply."""
    budget = Budget.from_settings(max_drop, ctx.settings)
    if fidelity.accuracy is not None:
        budget = budget.model_copy(
            update={"min_output_cosine": 0.0, "min_channel_cosine": 0.0, "min_slice_cosine": 0.0}
        )
    return judge(fidelity, budget)


def run_candidate(
    candidate: Candidate,
    steps: list[StepConfig],
    src: Path,
    ctx: PassContext,
    folder: Path,
    create_pass: CreatePass,
    evaluator: Evaluator,
    config: OptimizeConfig,
) -> None:
    """Run the candidate's steps on `src`; judge the result against the job's input model."""
    started = time.perf_counter()
    sub = PassContext(
        work_dir=folder,
        original_model=ctx.original_model,
        datasets=ctx.datasets,
        sink=ctx.sink,
        settings=ctx.settings,
        evaluator=evaluator,
        model_resolver=ctx.model_resolver,
    )
    current: Path | None = None
    for index, step in enumerate(steps):
        ctx.check_canceled()
        if isinstance(step, AutoQuantizeConfig) and current is not None:
            # the quantize budget is relative to its input: give it what the earlier steps left
            spent = judge_against_input(evaluator.fidelity(current), None, ctx).drop or 0.0
            step = step.model_copy(update={"max_accuracy_drop": max(config.target.max_accuracy_drop - spent, 0.0)})
        step_type = getattr(step, "type", "step")
        label = "distill (QAT)" if is_qat(steps, index) else step_type
        if label == "distill (QAT)" and (current is None or not trainable_qdq(current)):
            candidate.skipped.append("distill (QAT): quantize returned no QDQ graph with integer weights")
            continue
        sub.for_step(index, folder / f"{index}_{step_type}.onnx", folder / f"{index}_scratch")
        try:
            returned = adopt_output(create_pass(step).run(current or src, sub), sub, step_type)
        finally:
            shutil.rmtree(folder / f"{index}_scratch", ignore_errors=True)
        candidate.steps.append(label if returned is not None else f"{label} (unchanged)")
        if returned is not None:
            current = returned
    candidate.path = current
    if current is not None:
        candidate.verdict = judge_against_input(evaluator.fidelity(current), config.target.max_accuracy_drop, ctx)
        candidate.size_ratio = current.stat().st_size / src.stat().st_size
    candidate.wall_time_s = time.perf_counter() - started
