"""The prune step's config: one pydantic model per method, discriminated by `method`."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from compression.contract import StepConfig


class PruneBase(StepConfig):
    type: Literal["prune"] = "prune"
    exclude: list[str] = Field(default_factory=list, description="node names whose weights stay untouched")
    recalibrate_batchnorm: bool = Field(
        True, description="re-estimate BatchNorm running statistics on calibration/train data (when the job has it)"
    )


class MagnitudePruneConfig(PruneBase):
    """Zero the smallest-magnitude weights of Conv/Gemm/MatMul; shapes stay, zeros compress."""

    method: Literal["magnitude"]
    sparsity: float = Field(ge=0.0, le=1.0, description="fraction of the chosen weights set to zero")
    scope: Literal["global", "layer"] = Field("global", description="one threshold for all layers, or per layer")
    skip_first_last: bool = Field(True, description="leave the first and last weighted layers dense")


class NMPruneConfig(PruneBase):
    """Keep `n` of every `m` consecutive weights along the input-channel axis (2:4 by default)."""

    method: Literal["n_m"]
    n: int = Field(2, ge=1, description="weights kept in every block of m")
    m: int = Field(4, ge=2, description="block length along the input-channel axis")
    sparsity: float | None = Field(None, description="optional; must equal 1 - n/m when given")
    skip_first_last: bool = True

    @model_validator(mode="after")
    def _check(self) -> NMPruneConfig:
        if self.n >= self.m:
            raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
        if self.sparsity is not None and abs(self.sparsity - (1 - self.n / self.m)) > 1e-9:
            raise ValueError(f"sparsity {self.sparsity} contradicts {self.n}:{self.m} (which is {1 - self.n / self.m})")
        return self


class StructuredPruneConfig(PruneBase):
    """Remove whole output channels/features and everything coupled to them; the graph gets smaller."""

    method: Literal["structured"]
    sparsity: float = Field(
        ge=0.0,
        le=1.0,
        description="fraction of channels removed per prunable group (allocation 'uniform'), or the fraction whose "
        "weights are removed in total, spread by measured damage (allocation 'sensitivity')",
    )
    allocation: Literal["sensitivity", "uniform"] = Field(
        "sensitivity",
        description="'sensitivity': with calibration/train data, each group is tried alone at a few sparsities and "
        "gets the one that keeps the outputs closest to the original while the weights removed in total are at "
        "least uniform pruning's (bounded by the prune_allocation_* settings; uniform without data); 'uniform': "
        "every group loses `sparsity` of its channels",
    )
    importance: Literal["l1", "l2", "activation"] = Field(
        "l2",
        description="weight magnitude over the group's coupled layers, or mean |activation| (times the weight "
        "norm reading it) on calibration/train data",
    )
    round_to: int = Field(1, ge=1, description="keep channel counts a multiple of this")
    bias_compensation: bool = Field(
        False, description="fold each removed channel's mean (calibration/train data) into the next layer's bias"
    )
    reconstruct: bool = Field(
        True,
        description="with calibration/train data, refit every layer that reads removed channels (Conv, Gemm, MatMul) "
        "by least squares so its output on the pruned model's inputs matches the original model's (bounded by the "
        "prune_reconstruct_* settings; a layer whose fit does not lower its held-out error keeps its weights)",
    )
    speed_check: bool = Field(
        True,
        description="time the pruned model against its input (adaptive interleaved measurement, within "
        "prune_speed_check_seconds); when it is clearly slower (its latency ratio's whole confidence interval above "
        "latency_slowdown_tolerance: channel counts onnxruntime runs slowly) and round_to is 1, retry with the "
        "prune_round_to_candidates multiples and keep one only when it is clearly faster",
    )


PruneConfig = Annotated[
    Union[MagnitudePruneConfig, NMPruneConfig, StructuredPruneConfig],  # noqa: UP007
    Field(discriminator="method"),
]
