"""The quantize step's config: one pydantic model per mode, discriminated by `mode`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Union, get_args

from pydantic import Field, field_validator

from compression.contract import StepConfig
from compression.quantization.budget import BudgetMetric


class Objective(StrEnum):
    """What a quantize step optimizes once the budget holds; no objective returns a clearly slower model."""

    LATENCY = "latency"  # the fastest candidate clearly faster than the input, else the input
    SIZE = "size"  # the smallest candidate whose latency is not clearly worse than the input's
    BALANCED = "balanced"  # the smallest not clearly slower; among about equally small ones, the fastest


# modes that store weights smaller and compute in float from weights onnxruntime folds at load: the input's own
# kernels, so never faster than it (a faster reading is measurement noise) and chosen only for size
FLOAT_COMPUTE_MODES = frozenset({"int8_weights", "fp16_weights"})


class CalibrationMethodName(StrEnum):
    """How static quantization turns calibration tensors into activation ranges (onnxruntime's methods; the
    mapping to onnxruntime's enum is `calibration.ort_method`)."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"
    DISTRIBUTION = "distribution"


class QuantizeBase(StepConfig):
    type: Literal["quantize"] = "quantize"
    nodes_to_exclude: list[str] = Field(default_factory=list, description="node names kept in float")
    op_types_to_exclude: list[str] = Field(default_factory=list, description="op types kept in float")
    max_accuracy_drop: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="budget as a fraction (0.01 = one point of accuracy, or of top-1 agreement without labels); "
        "when set, the most sensitive nodes are kept in float until it is met",
    )
    speed_guard: bool = Field(
        True,
        description="return the input model when the quantized one is clearly slower: the whole confidence interval "
        "of its latency ratio (measured interleaved) above latency_slowdown_tolerance; with objective 'latency', "
        "unless it is clearly faster",
    )
    objective: Objective = Field(
        "balanced",  # type: ignore[assignment]  # validated into Objective.BALANCED; shows plainly in the README
        validate_default=True,
        description="'balanced' (the smallest candidate within budget whose latency is not clearly worse than "
        "the input's; about equally small ones are ranked by speed), 'size' (the smallest such candidate), "
        "'latency' (the fastest candidate clearly faster than the input); an inconclusive latency measurement "
        "counts as not worse, never as faster",
    )
    budget_metric: BudgetMetric | dict[str, BudgetMetric] | None = Field(
        None,
        description="how the budget is judged: one metric for every output or {output name: metric}, among "
        "'accuracy', 'top1', 'top1_per_step', 'agreement', 'cosine', 'snr_db'; default chosen per output from "
        "its kind (class scores: top1, or accuracy with labels; sequences of distributions: top1_per_step; "
        "maps and features: cosine; integer outputs: agreement) and recorded in the metrics",
    )


class DynamicQuantizeConfig(QuantizeBase):
    """int8 weights, activations quantized at run time: no calibration data needed."""

    mode: Literal["dynamic"]
    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = False
    conv: Literal["int8_weights", "integer", "float"] = Field(
        "int8_weights",
        description="Conv handling: int8 storage with float compute (default; dynamic ConvInteger is several "
        "times slower than float Conv on CPU), 'integer' for ConvInteger, 'float' to leave Conv untouched",
    )


class StaticQuantizeConfig(QuantizeBase):
    """int8 weights and activations, activation ranges calibrated on the job's calibration data."""

    mode: Literal["static"]
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    calibration_method: CalibrationMethodName = CalibrationMethodName.MINMAX
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8 activations hit onnxruntime's fast u8s8 kernels on x86"
    )
    weight_type: Literal["int8", "uint8"] = "int8"
    calibration_samples: int = Field(512, ge=1, description="samples of the calibration dataset used")
    synthetic_calibration: bool = Field(
        False, description="calibrate on random inputs when the job has no calibration data (flagged in metrics)"
    )
    float_bias: bool = Field(True, description="keep biases float32 (smaller than int32 + scale; same kernels)")
    keep_small_convs_float: bool = Field(
        True,
        description="time Conv nodes with a tiny reduction (e.g. a 1-channel stem) float vs int8; keep the faster",
    )


class WeightOnlyQuantizeConfig(QuantizeBase):
    """Block-wise 4/8-bit weights for MatMul (and Gather) via onnxruntime's MatMulNBits quantizer."""

    mode: Literal["weight_only"]
    bits: Literal[4, 8] = 4
    block_size: int = Field(32, ge=16, description="weights per quantization block along K (power of 2, >= 16)")
    symmetric: bool = True
    algorithm: Literal["rtn", "hqq", "gptq"] = "rtn"
    op_types: list[Literal["MatMul", "Gather"]] = Field(default_factory=lambda: ["MatMul"])
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None, description="MatMulNBits compute type (4 = int8 compute, fastest on CPU); None = onnxruntime default"
    )
    calibration_samples: int = Field(128, ge=1, description="samples used by gptq")

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"block_size must be a power of 2 (16, 32, 64, 128, ...), got {value}")
        return value


WeightStorageOp = Literal["Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN", "Gather", "Attention"]


class WeightStorageBase(QuantizeBase):
    op_types: list[WeightStorageOp] = Field(
        default_factory=lambda: list(get_args(WeightStorageOp)),
        description="ops whose weights are stored smaller (weights read inside If/Loop/Scan bodies included)",
    )


class Int8WeightsQuantizeConfig(WeightStorageBase):
    """int8 weight storage, float compute: every weight rounded to int8 (per output channel) and rebuilt to
    float in the graph. Only weight rounding error; no activation quantization. Named after dynamic's
    `conv: int8_weights`, which does the same for Conv weights alone."""

    mode: Literal["int8_weights"]
    per_channel: bool = Field(True, description="one scale per output channel (per tensor when false)")
    rebuild: Literal["cast_mul", "dequantize_linear"] = Field(
        "cast_mul",
        description="how the float weight is rebuilt: 'cast_mul' (Cast * scale, constant-folded by onnxruntime "
        "when a session starts: float latency, int8 file) or 'dequantize_linear' (the QDQ form; onnxruntime "
        "runs it on every inference)",
    )
    kept_out_of_int8: Literal["float16", "float32"] = Field(
        "float16",
        description="how the weights of the nodes the budget search keeps out of int8 are stored: 'float16' "
        "(half the bytes, ~5e-4 relative error) or 'float32' (untouched); nodes_to_exclude always stay float32",
    )


class Fp16WeightsQuantizeConfig(WeightStorageBase):
    """float16 weight storage, float32 compute: half the size, rounding error about 5e-4 per weight; for graphs
    whose outputs do not survive int8 weights. Unlike `fp16`, nothing computes in float16 (no casts around ops)."""

    mode: Literal["fp16_weights"]


class Fp16QuantizeConfig(QuantizeBase):
    """float16 weights and compute; inputs and outputs stay float32 unless `keep_io_types` is false."""

    mode: Literal["fp16"]
    keep_io_types: bool = True
    speed_guard: bool = Field(
        False, description="off by default: fp16 is a size/GPU choice and CPU kernels are mostly float32"
    )


AutoCandidate = Literal["static", "dynamic", "weight_only", "int8_weights", "fp16_weights", "fp16"]


class AutoQuantizeConfig(QuantizeBase):
    """Try the modes that fit the graph; of those within budget, return the one the objective picks, else the input."""

    mode: Literal["auto"]
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0, description="budget as a fraction (0.01 = one point)")
    candidates: list[AutoCandidate] | None = Field(
        None, description="modes to try; default chosen from the graph's operators"
    )
    synthetic_calibration: bool = False


QuantizeConfig = Annotated[
    Union[  # noqa: UP007
        DynamicQuantizeConfig,
        StaticQuantizeConfig,
        WeightOnlyQuantizeConfig,
        Int8WeightsQuantizeConfig,
        Fp16WeightsQuantizeConfig,
        Fp16QuantizeConfig,
        AutoQuantizeConfig,
    ],
    Field(discriminator="mode"),
]
ModeConfig = (
    DynamicQuantizeConfig
    | StaticQuantizeConfig
    | WeightOnlyQuantizeConfig
    | Int8WeightsQuantizeConfig
    | Fp16WeightsQuantizeConfig
    | Fp16QuantizeConfig
)
