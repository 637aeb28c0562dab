"""Engine knobs the caller (CLI or service settings) passes in; the engine reads no environment itself.

Knobs are grouped by what they tune (latency measurement, evaluation, one group per method). Each knob
also has one flat name, `<group prefix><field>` (`quant_min_output_cosine`, `latency_runs`): the service
reads its environment variables under those names, and `EngineSettings(quant_min_output_cosine=0.99)` works
too. A few older flat names are kept as aliases (`quant_latency_runs` and `prune_latency_runs` are
`latency_runs` now; `quant_slowdown_tolerance` and `prune_slowdown_tolerance` are `latency_slowdown_tolerance`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReduceRange(StrEnum):
    """7-bit weights for onnxruntime's integer kernels: 'auto' where u8s8 products can saturate (x86 without VNNI)."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class SettingsGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env_prefix: ClassVar[str]
    aliases: ClassVar[dict[str, str]] = {}  # older flat name -> field


class LatencySettings(SettingsGroup):
    """How latency is measured: interleaved rounds of every compared model on the same feed."""

    env_prefix: ClassVar[str] = "latency_"
    aliases: ClassVar[dict[str, str]] = {
        "quant_latency_runs": "runs",
        "prune_latency_runs": "runs",
        "quant_slowdown_tolerance": "slowdown_tolerance",
        "prune_slowdown_tolerance": "slowdown_tolerance",
    }

    runs: int = Field(
        200,
        ge=3,
        description="most interleaved rounds per latency comparison (a round times every compared model once); "
        "it stops earlier once every ratio's interval is narrow enough or decided",
    )
    min_rounds: int = Field(10, ge=3, description="rounds before the ratio intervals are first checked")
    min_seconds: float = Field(
        1.0,
        ge=0,
        description="timed seconds before the ratio intervals are first checked, so rounds of a fast model span "
        "the machine's load swings instead of one burst",
    )
    max_seconds: float = Field(
        20.0,
        gt=0,
        description="wall-time cap on one latency comparison (sessions, warm-up and rounds), whatever the load; "
        "a comparison stopped by it before its intervals are narrow or decided is marked inconclusive",
    )
    target_half_width: float = Field(
        0.03,
        gt=0,
        description="a ratio's interval is narrow enough when its half-width is within this fraction of the ratio",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="coverage of the interval around each median latency ratio"
    )
    warmup: int = Field(5, ge=0, description="untimed runs of each model before timing")
    threads: int = Field(1, ge=1, description="intra-op threads for every latency and eval session")
    batch_size: int = Field(32, ge=1, description="samples per timed run (batched datasets)")
    slowdown_tolerance: float = Field(
        1.05,
        gt=0,
        description="a compressed model counts as slower than its input when its latency ratio exceeds this "
        "(quantize: when the ratio's whole interval is above it, the input is returned; structured prune retries "
        "channel multiples)",
    )


class EvalSettings(SettingsGroup):
    env_prefix: ClassVar[str] = "eval_"

    max_samples: int = Field(2000, ge=1, description="cap on eval samples used for fidelity")
    batch_size: int = Field(256, ge=1, description="samples per inference batch while evaluating")
    activation_memory_mb: int = Field(
        1024,
        ge=16,
        description="intermediate tensors one eval batch may produce (MB, measured per sample on the model): the "
        "eval batch shrinks below batch_size for large inputs (a 640x640 detector runs a few samples per batch)",
    )
    max_output_mb: int = Field(
        256,
        ge=1,
        description="model outputs held for one model's eval run (MB): eval samples are capped so the reference "
        "outputs and a candidate's fit (a 1x640x640 map is 1.6 MB per sample)",
    )
    max_run_seconds: float = Field(
        300.0,
        gt=0,
        description="longest one onnxruntime run may take (any run the engine makes: evaluation, calibration, "
        "latency); past it the run is stopped and the job fails saying so. Cancel also stops a run",
    )


class QuantizeSettings(SettingsGroup):
    """The quantize step (compression/quantization): budget floors and search limits."""

    env_prefix: ClassVar[str] = "quant_"

    min_output_cosine: float = Field(0.98, ge=0, le=1, description="per-output cosine floor vs the input")
    min_channel_cosine: float = Field(0.9, ge=0, le=1, description="floor per last-axis channel (small outputs)")
    min_slice_cosine: float = Field(
        0.98,
        ge=0,
        le=1,
        description="floor on the worst per-slice cosine: one step of a sequence output, one channel or tile of a "
        "dense map",
    )
    min_snr_db: float = Field(20.0, description="floor on the worst per-sample SNR of outputs judged by 'snr_db'")
    min_conv_reduction: int = Field(32, ge=1, description="Convs reducing over fewer values: timed float vs int8")
    pad_conv_channels: bool = Field(
        True,
        description="static QDQ: also time every Conv int8 with its input channels padded to a multiple of 4 "
        "(onnxruntime's direct int8 kernel; exact) and keep it when faster",
    )
    eval_samples: int = Field(1000, ge=1, description="eval samples for budget checks")
    sensitivity_samples: int = Field(
        64, ge=1, description="eval samples whose intermediate tensors are compared (streamed in batches)"
    )
    activation_memory_mb: int = Field(
        512,
        ge=16,
        description="intermediate tensors held at once (MB) by static calibration and the sensitivity ranking: "
        "sets their batch size and how many samples are collected before statistics are merged",
    )
    exclusion_rounds: int = Field(6, ge=1, description="max re-quantizations while keeping nodes in float")
    give_back_attempts: int = Field(
        4,
        ge=0,
        description="after the budget holds with nodes kept float, at most this many attempts quantize them again "
        "(least sensitive first, in halves) while the budget still holds; 0: no give-back",
    )
    search_time_factor: float | None = Field(
        1.5,
        gt=0,
        description="auto: once the search has run this many times the cost of a candidate's first full attempt "
        "(prepare + calibrate + quantize + evaluate; the largest so far), no further attempt starts (exclusions, "
        "bisection, sensitivity ranking; every candidate still gets its first attempt); the best within-budget "
        "attempt so far is kept and the metrics say what was not tried. Relative to the work, so it holds under "
        "load; unset: no bound",
    )
    search_time_min_s: float = Field(
        5.0,
        ge=0,
        description="auto: the search_time_factor bound never stops the search before this many seconds: on small "
        "models every first attempt is cheap (deepcut 4.8 s, silero_vad 0.7-1.0 s) and the candidates' first "
        "attempts alone pass factor x the largest one, which left no time for any search (silero_vad then "
        "returned fp16_weights instead of int8_weights' search result); large models are unaffected",
    )
    sensitivity_activation_mb: int = Field(
        2048,
        ge=16,
        description="the sensitivity ranking compares at most this many MB of intermediate tensors per model "
        "(samples x the model's activation bytes per sample, at least 2 samples): fewer samples for models with "
        "large activations (a 640x640 detector: 650 MB per sample), whose ranking otherwise costs several attempts",
    )
    sensitivity_when_met: bool = Field(
        True,
        description="rank node sensitivity (information only) when the first attempt already meets the budget; "
        "auto ranks only when its search time bound has not been reached",
    )
    min_speedup: float = Field(
        1.02,
        ge=1,
        description="objective 'latency': a candidate is clearly faster when the upper end of its latency ratio's "
        "interval times this is below 1",
    )
    size_tie: float = Field(
        0.1,
        ge=0,
        description="objective 'balanced': candidates at most this fraction larger than the smallest count as "
        "equally small, and the fastest of them is chosen",
    )
    weight_only_min_elements: int = Field(
        65536, ge=1, description="auto tries 4-bit weight-only when a MatMul weight has at least this many values"
    )
    weight_storage_min_elements: int = Field(
        256,
        ge=1,
        description="int8_weights (and auto's int8_weights candidate): weights with fewer values stay float "
        "(their scales and rebuild nodes would cost about what int8 saves)",
    )
    reduce_range: ReduceRange = Field(
        ReduceRange.AUTO,
        description="static/dynamic int8: 'auto' quantizes weights to 7 bits on x86 CPUs without VNNI, where "
        "onnxruntime's u8s8 kernels saturate (worst output cosine 0.90 -> 0.997 on the residual CNN); "
        "'always' / 'never' force it",
    )
    activation_range_choice: bool = Field(
        True,
        description="static with calibration_method minmax: per activation, keep the min-max range or clip its "
        "tails, whichever has the smaller expected quantization error on the calibration histogram",
    )
    range_refinement_activation_mb: int | None = Field(
        1024,
        ge=1,
        description="activation range choice: histogram at most this many MB of intermediate tensors (calibration "
        "samples x the tensors' bytes per sample, at least one batch); the min-max ranges still come from every "
        "sample. An 800x608 detector (830 MB per sample) histograms 1 sample instead of 8 (56 s -> 7 s); unset: all",
    )
    smooth_quant: bool = Field(
        True,
        description="static/dynamic: SmoothQuant the MatMuls read by a LayerNormalization (divide its outlier "
        "channels by s, multiply the weight rows by s; folded into the norm's scale and bias)",
    )
    smooth_quant_alpha: float = Field(
        0.5, ge=0, le=1, description="SmoothQuant migration strength: s = max|X|^alpha / max|W|^(1 - alpha)"
    )
    smooth_quant_min_outlier_ratio: float = Field(
        8.0, ge=1, description="smooth only activations whose largest channel max is this many times the median"
    )
    smooth_quant_samples: int = Field(128, ge=1, description="calibration samples for the channel maxima (streamed)")
    bias_correction: bool = Field(
        True,
        description="static QDQ: add the mean shift weight rounding causes, (W - W_q) x E[x] from float channel "
        "means on calibration data, to each quantized Conv/MatMul/Gemm bias; kept when the outputs get closer",
    )
    bias_correction_samples: int = Field(
        128, ge=1, description="calibration samples whose float channel means bias correction uses (streamed)"
    )
    bias_correction_activation_mb: int | None = Field(
        4096,
        ge=1,
        description="bias correction: its float channel statistics cover at most this many MB of activations "
        "(samples x the model's activation bytes per sample); when fewer than 8 samples (or the whole calibration "
        "set, if smaller) fit, it is not run (metrics `bias_correction.not_run`): the 640x640 and 800x608 "
        "detectors (650-830 MB per sample) paid 18-29 s for a correction that was never kept; unset: every "
        "bias_correction_samples sample",
    )
    transformer_fusion: bool = Field(
        True,
        description="dynamic: also quantize the graph after onnxruntime's transformer fusions (Attention, "
        "LayerNormalization, SkipLayerNormalization, BiasGelu/FastGelu) and keep the fastest within budget",
    )
    fusion_gelu_approximation: bool = Field(
        True, description="transformer fusion may replace exact (Erf) GELU by its tanh form, FastGelu (error < 1e-3)"
    )


class PruneSettings(SettingsGroup):
    """The prune step (compression/pruning)."""

    env_prefix: ClassVar[str] = "prune_"

    activation_samples: int = Field(256, ge=1, description="samples scored for activation importance")
    min_channels: int = Field(1, ge=1, description="structured pruning never leaves a group narrower")
    round_to_candidates: list[int] = Field(
        [8, 16], description="channel multiples tried when structured pruning with round_to 1 comes out slower"
    )
    speed_check_seconds: float = Field(
        20.0,
        gt=0,
        description="time budget of the structured prune speed check: its latency measurements are capped by what "
        "remains of it, and channel-multiple retries are skipped when too little remains",
    )
    reconstruct_seconds: float = Field(
        15.0,
        gt=0,
        description="time budget of structured pruning's least-squares reconstruction (runs of both models and the "
        "solves); layers left when it is spent keep their weights",
    )
    reconstruct_rows: int = Field(
        2048, ge=16, description="rows (output positions, sampled over the calibration feeds) fitted per layer"
    )
    reconstruct_max_columns: int = Field(
        4608, ge=1, description="layers whose fit has more input columns (Conv: channels x kernel size) keep weights"
    )
    reconstruct_memory_mb: int = Field(
        512,
        ge=16,
        description="memory for one reconstruction batch's tapped tensors, the held target rows and a stage's Gram "
        "matrices (MB)",
    )
    reconstruct_samples: int = Field(64, ge=1, description="calibration samples the reconstruction runs on")
    allocation_seconds: float = Field(
        15.0,
        gt=0,
        description="time budget of structured pruning's sensitivity allocation (each group tried alone at a few "
        "sparsities): every group's trial at the requested sparsity first, then the other levels (extrapolated when "
        "it is spent); when it cannot give every group that one trial, the prune stays uniform",
    )
    allocation_samples: int = Field(8, ge=1, description="calibration samples each allocation trial runs on")
    allocation_max_group_sparsity: float = Field(
        0.8, gt=0, lt=1, description="sensitivity allocation never removes more than this fraction of one group"
    )


class DistillSettings(SettingsGroup):
    """The distill step (compression/training): bounds on the torch training it runs."""

    env_prefix: ClassVar[str] = "distill_"

    threads: int = Field(1, ge=1, description="torch (and teacher onnxruntime) threads while distilling")
    max_epochs: int = Field(200, ge=1, description="largest 'epochs' a distill step may ask for")
    max_train_samples: int = Field(100_000, ge=1, description="train samples used by distill (first N)")
    max_target_mb: int = Field(2048, ge=1, description="memory cap on the cached teacher outputs")
    max_loop_iterations: int = Field(10_000, ge=1, description="iterations a Loop or Scan may run per forward")
    activation_memory_mb: int = Field(
        2048,
        ge=16,
        description="intermediate tensors one training forward may keep for its backward pass (MB, 3x the "
        "teacher's measured per-sample activations): an optimizer step of batch_size samples runs as several "
        "smaller forwards with their gradients summed when one would pass this (a 640x640 detector: 1-2 samples "
        "per forward); the step's batch and learning rate stay the same",
    )
    auto_hint_mb: int = Field(
        256, ge=1, description="memory cap on the teacher targets of the automatically found hint tensors"
    )
    guard_worst_tolerance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="a trained student is returned only when its mean per-sample output cosine to the teacher on "
        "the held-out selection data beats its input's and its worst sample's is not lower by more than this; "
        "else the step returns its input unchanged",
    )
    guard_seconds: float = Field(
        20.0,
        gt=0,
        description="time the final check may spend widening a small unlabeled selection set with mixed copies "
        "(sized from the teacher's time per sample: three runs per copy)",
    )


class OptimizeSettings(SettingsGroup):
    """The optimize step (compression/optimize): bounds on its search."""

    env_prefix: ClassVar[str] = "optimize_"

    max_seconds: float = Field(1800.0, gt=0, description="an optimize step starts no new candidate after this long")


GROUPS: dict[str, type[SettingsGroup]] = {
    "latency": LatencySettings,
    "evaluation": EvalSettings,
    "quantize": QuantizeSettings,
    "prune": PruneSettings,
    "distill": DistillSettings,
    "optimize": OptimizeSettings,
}


def flat_names() -> dict[str, tuple[str, str]]:
    """Every flat knob name (aliases included) -> (group, field)."""
    names: dict[str, tuple[str, str]] = {}
    for group, model in GROUPS.items():
        for field in model.model_fields:
            names[f"{model.env_prefix}{field}"] = (group, field)
        for alias, field in model.aliases.items():
            names[alias] = (group, field)
    return names


class EngineSettings(BaseModel):
    seed: int = Field(0, description="seed for synthetic inputs and sampling")
    synthetic_samples: int = Field(64, ge=1, description="samples drawn from declared shapes without eval data")
    latency: LatencySettings = Field(default_factory=LatencySettings)
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    quantize: QuantizeSettings = Field(default_factory=QuantizeSettings)
    prune: PruneSettings = Field(default_factory=PruneSettings)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    optimize: OptimizeSettings = Field(default_factory=OptimizeSettings)

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, data: Any) -> Any:
        """Accept flat names (`latency_runs=5`) beside nested groups; a flat name wins over its group's value."""
        if not isinstance(data, dict):
            return data
        names = flat_names()
        flat = {key: data[key] for key in list(data) if key in names}
        if not flat:
            return data
        nested = {key: value for key, value in data.items() if key not in flat}
        aliases = {alias for model in GROUPS.values() for alias in model.aliases}
        for key, value in sorted(flat.items(), key=lambda item: item[0] not in aliases):  # current names win
            group, field = names[key]
            current = nested.get(group, {})
            if isinstance(current, BaseModel):
                current = current.model_dump(exclude_unset=True)
            nested[group] = {**current, field: value}
        return nested

    def engine_only(self) -> EngineSettings:
        """These knobs alone (a service settings object carries more)."""
        return EngineSettings.model_validate(self.model_dump(include=set(EngineSettings.model_fields)))
