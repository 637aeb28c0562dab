"""The optimize step's config: the target to meet and the search space to meet it in."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compression.contract import StepConfig


class Target(BaseModel):
    """What the returned model must achieve against the job's input model; unset ratios are not constrained."""

    model_config = ConfigDict(extra="forbid")

    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="accuracy drop (or 1 - top-1 agreement without labels), plus the output floors"
    )
    latency_ratio: float | None = Field(None, gt=0, description="output / input median latency must be at most this")
    size_ratio: float | None = Field(None, gt=0, description="output / input file size must be at most this")


class OptimizeConfig(StepConfig):
    """Search prune sparsity (none included), distill, then quantize (auto); return the best model meeting `target`.

    Candidates run from the lightest to the most aggressive; every candidate's figures are in the metrics.
    """

    type: Literal["optimize"] = "optimize"
    target: Target = Field(default_factory=Target)
    sparsities: list[float] = Field(
        [0.0, 0.25, 0.5], min_length=1, description="structured prune sparsities tried (0: no pruning), ascending"
    )
    importance: Literal["l1", "l2", "activation"] = Field("l2", description="structured prune importance")
    round_to: int = Field(8, ge=1, description="pruned channel counts are a multiple of this (fast kernels)")
    distill_epochs: int = Field(10, ge=0, description="distillation epochs after pruning (0: none); needs train data")
    distill_lr: float = Field(3e-3, gt=0, le=1, description="distillation learning rate")
    quantize: bool = Field(True, description="quantize every candidate with mode auto")
    qat_epochs: int = Field(
        0,
        ge=0,
        description="quantization-aware fine-tuning after quantize (a distill step on the int8 QDQ graph, teacher: "
        "the step's input; skipped when quantize returned no QDQ graph); 0 (default): none, it measured no gain "
        "on the dev models (docs/optimize.md); needs train data",
    )
    qat_lr: float = Field(1e-3, gt=0, le=1, description="QAT learning rate")
    prefer: Literal["latency", "size"] = Field("latency", description="among candidates meeting the target")
    max_seconds: float | None = Field(
        None, gt=0, description="stop starting new candidates after this long (capped by optimize_max_seconds)"
    )

    @field_validator("sparsities")
    @classmethod
    def _ascending(cls, value: list[float]) -> list[float]:
        if any(not 0.0 <= s < 1.0 for s in value):
            raise ValueError("every sparsity must be in [0, 1)")
        return sorted(set(value))
