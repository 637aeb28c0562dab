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
    # prune step (compression/passes/prune.py)
    prune_activation_samples: int = Field(256, ge=1, description="samples scored for activation importance")
    prune_min_channels: int = Field(1, ge=1, description="structured pruning never leaves a group narrower")
