"""The `prune` step: magnitude and N:M zeroing, or structured channel removal that shrinks the graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from compression.datasets import Dataset
from compression.metrics.macs import count_macs
from compression.metrics.model_stats import gzip_size, model_stats
from compression.passes.base import CompressionPass, PassContext, PassResult, StepConfig
from compression.passes.registry import register_pass
from compression.pruning.batchnorm import recalibrate_batchnorm
from compression.pruning.structured import structured_prune
from compression.pruning.unstructured import unstructured_prune


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
    sparsity: float = Field(ge=0.0, le=1.0, description="fraction of channels removed per prunable group")
    importance: Literal["l1", "l2", "activation"] = Field(
        "l2",
        description="weight magnitude over the group's coupled layers, or mean |activation| (times the weight "
        "norm reading it) on calibration/train data",
    )
    round_to: int = Field(1, ge=1, description="keep channel counts a multiple of this")
    bias_compensation: bool = Field(
        False, description="fold each removed channel's mean (calibration/train data) into the next layer's bias"
    )
    speed_check: bool = Field(
        True,
        description="time the pruned model against its input; when it is slower (channel counts onnxruntime runs "
        "slowly) and round_to is 1, retry with the prune_round_to_candidates multiples and keep the fastest",
    )


PruneConfig = Annotated[
    Union[MagnitudePruneConfig, NMPruneConfig, StructuredPruneConfig],  # noqa: UP007
    Field(discriminator="method"),
]


def _facts(path: Path) -> dict[str, int]:
    return {**model_stats(path), "gzip_bytes": gzip_size(path), "macs": count_macs(path)["macs"]}


@register_pass
class PrunePass(CompressionPass):
    step_type = "prune"
    config_model = PruneConfig

    def run(self, model_path: Path, ctx: PassContext) -> PassResult:
        config = self.config
        out = ctx.new_model_path(f"prune_{config.method}")
        ctx.progress(0.05, f"prune ({config.method})")
        before = _facts(model_path)
        details: dict[str, Any]
        if isinstance(config, StructuredPruneConfig):
            dataset = None
            if config.importance == "activation" or config.bias_compensation:
                purpose = "activation importance" if config.importance == "activation" else "bias compensation"
                dataset = ctx.require("calibration", "train", purpose=f"structured pruning with {purpose}")
            details = self._structured(model_path, out, config, dataset, ctx)
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
        ctx.check_cancelled()
        details["batchnorm_recalibrated"] = self._recalibrate(out, ctx, changed)
        ctx.progress(0.9, "measuring the pruned model")
        after = _facts(out)
        metrics = {"method": config.method, **details, "before": before, "after": after}
        metrics["parameter_ratio"] = after["parameters"] / before["parameters"] if before["parameters"] else None
        metrics["macs_ratio"] = after["macs"] / before["macs"] if before["macs"] else None
        return PassResult(model_path=out, changed=changed, metrics=metrics)

    def _structured(
        self, model_path: Path, out: Path, config: StructuredPruneConfig, dataset: Dataset | None, ctx: PassContext
    ) -> dict[str, Any]:
        def prune(destination: Path, round_to: int) -> dict[str, Any]:
            return structured_prune(
                model_path,
                destination,
                sparsity=config.sparsity,
                importance=config.importance,
                round_to=round_to,
                min_channels=ctx.settings.prune_min_channels,
                exclude=config.exclude,
                dataset=dataset,
                batch_size=ctx.settings.eval_batch_size,
                max_samples=ctx.settings.prune_activation_samples,
                check_cancelled=ctx.check_cancelled,
                bias_compensation=config.bias_compensation,
            )

        details = prune(out, config.round_to)
        if not config.speed_check or details["channels_removed"] == 0:
            return details
        ctx.progress(0.5, "timing the pruned model against its input")
        ratios = self._latency_ratios(model_path, [out], ctx)
        details["latency_ratio"] = ratios[0]
        if ratios[0] <= ctx.settings.prune_slowdown_tolerance or config.round_to != 1:
            return details
        # Odd channel counts can miss onnxruntime's blocked kernels: try multiples that hit them.
        tries = {
            round_to: ctx.new_model_path(f"prune_round{round_to}")
            for round_to in ctx.settings.prune_round_to_candidates
        }
        candidates = {round_to: prune(path, round_to) for round_to, path in tries.items()}
        ratios = self._latency_ratios(model_path, [out, *tries.values()], ctx)
        options = [(ratios[0], 1, details), *zip(ratios[1:], tries, candidates.values(), strict=True)]
        ratio, round_to, chosen = min(options, key=lambda option: option[0])
        if round_to != 1:
            out.write_bytes(tries[round_to].read_bytes())
        ctx.event(
            "pruned model was slower than its input; retried with channel multiples",
            tried={str(k): round(v, 3) for (v, k, _) in options},
            chosen_round_to=round_to,
        )
        if ratio > ctx.settings.prune_slowdown_tolerance:
            ctx.event("every tried channel multiple is slower than the input", latency_ratio=round(ratio, 3))
        return {
            **chosen,
            "latency_ratio": ratio,
            "round_to_used": round_to,
            "round_to_tried": [k for _, k, _ in options],
        }

    @staticmethod
    def _latency_ratios(src: Path, candidates: list[Path], ctx: PassContext) -> list[float]:
        stats = ctx.reference().latency([src, *candidates], ctx.settings.prune_latency_runs, ctx.check_cancelled)
        return [candidate.median_ms / stats[0].median_ms for candidate in stats[1:]]

    def _recalibrate(self, path: Path, ctx: PassContext, changed: bool) -> list[str] | str:
        """BatchNorm names re-estimated, or why none were."""
        if not self.config.recalibrate_batchnorm or not changed:
            return "off" if not self.config.recalibrate_batchnorm else "not needed (nothing pruned)"
        dataset = ctx.datasets.calibration or ctx.datasets.train
        if dataset is None:
            ctx.event("BatchNorm statistics kept: give a calibration or train dataset to re-estimate them")
            return "skipped (needs a calibration or train dataset)"
        ctx.progress(0.7, "re-estimating BatchNorm statistics")
        return recalibrate_batchnorm(
            path, dataset, ctx.settings.eval_batch_size, ctx.settings.prune_activation_samples, ctx.check_cancelled
        )
