"""The `quantize` step: one config per mode, discriminated by `mode`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field

from compression.passes.base import CompressionPass, PassContext, PassResult, StepConfig
from compression.passes.registry import register_pass
from compression.quantization.dynamic import dynamic_quantize


class QuantizeBase(StepConfig):
    type: Literal["quantize"] = "quantize"
    nodes_to_exclude: list[str] = Field(default_factory=list, description="node names kept in float")
    op_types_to_exclude: list[str] = Field(default_factory=list, description="op types kept in float")


class DynamicQuantizeConfig(QuantizeBase):
    """int8 weights, activations quantized at run time: no calibration data needed."""

    mode: Literal["dynamic"]
    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = False


QuantizeConfig = Annotated[Union[DynamicQuantizeConfig], Field(discriminator="mode")]  # noqa: UP007


@register_pass
class QuantizePass(CompressionPass):
    step_type = "quantize"
    config_model = QuantizeConfig

    def run(self, model_path: Path, ctx: PassContext) -> PassResult:
        config = self.config
        out = ctx.new_model_path(f"quantize_{config.mode}")
        ctx.progress(0.05, f"quantize ({config.mode})")
        with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
            details = dynamic_quantize(
                model_path,
                out,
                Path(tmp),
                weight_type=config.weight_type,
                per_channel=config.per_channel,
                nodes_to_exclude=config.nodes_to_exclude,
                op_types_to_exclude=config.op_types_to_exclude,
                report=ctx.event,
            )
        ctx.check_cancelled()
        return PassResult(model_path=out, changed=True, metrics={"mode": config.mode, **details})
