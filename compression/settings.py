"""Engine knobs the caller (CLI or service settings) passes in; the engine reads no environment itself."""

from __future__ import annotations

from pydantic import BaseModel, Field


class EngineSettings(BaseModel):
    latency_runs: int = Field(50, ge=3, description="timed runs per model after warm-up")
    latency_warmup: int = Field(5, ge=0, description="untimed runs before timing")
    latency_threads: int = Field(1, ge=1, description="intra-op threads for every latency and eval session")
    latency_batch_size: int = Field(32, ge=1, description="samples per timed run (batched datasets)")
    eval_max_samples: int = Field(2000, ge=1, description="cap on eval samples used for fidelity")
    eval_batch_size: int = Field(256, ge=1)
    synthetic_samples: int = Field(64, ge=1, description="samples drawn from declared shapes without eval data")
    seed: int = 0
    # quantize step (compression/quantization): budget floors, search limits, speed checks
    quant_min_output_cosine: float = Field(0.98, ge=0, le=1, description="per-output cosine floor vs the input")
    quant_min_channel_cosine: float = Field(0.9, ge=0, le=1, description="floor per last-axis channel (small outputs)")
    quant_min_conv_reduction: int = Field(32, ge=1, description="Convs reducing over fewer values: timed float vs int8")
    quant_eval_samples: int = Field(1000, ge=1, description="eval samples for budget checks")
    quant_sensitivity_samples: int = Field(
        64, ge=1, description="eval samples whose intermediate tensors are compared (memory grows with it)"
    )
    quant_exclusion_rounds: int = Field(6, ge=1, description="max re-quantizations while keeping nodes in float")
    quant_latency_runs: int = Field(30, ge=3, description="interleaved timed runs per candidate in speed checks")
    quant_min_speedup: float = Field(
        1.02, ge=1, description="auto: a candidate must be this much faster than the input"
    )
    quant_weight_only_min_elements: int = Field(
        65536, ge=1, description="auto tries 4-bit weight-only when a MatMul weight has at least this many values"
    )
    quant_slowdown_tolerance: float = Field(
        1.05, ge=1, description="explicit modes: latency ratio above which the input model is returned instead"
    )
    # prune step (compression/passes/prune.py)
    prune_activation_samples: int = Field(256, ge=1, description="samples scored for activation importance")
    prune_min_channels: int = Field(1, ge=1, description="structured pruning never leaves a group narrower")
    prune_latency_runs: int = Field(30, ge=3, description="interleaved timed runs per model in the prune speed check")
    prune_slowdown_tolerance: float = Field(
        1.05, ge=0, description="structured pruning retries channel multiples when its latency ratio exceeds this"
    )
    prune_round_to_candidates: list[int] = Field(
        [8, 16], description="channel multiples tried when structured pruning with round_to 1 comes out slower"
    )
    # distill step (compression/training): bounds on the torch training the step runs
    distill_threads: int = Field(1, ge=1, description="torch (and teacher onnxruntime) threads while distilling")
    distill_max_epochs: int = Field(200, ge=1, description="largest 'epochs' a distill step may ask for")
    distill_max_train_samples: int = Field(100_000, ge=1, description="train samples used by distill (first N)")
    distill_max_target_mb: int = Field(2048, ge=1, description="memory cap on the cached teacher outputs")
    distill_max_loop_iterations: int = Field(10_000, ge=1, description="iterations a Loop or Scan may run per forward")
