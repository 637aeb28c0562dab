"""Memory-bounded runs for the quantizer: arena-free sessions and batches sized to a memory setting.

The per-sample size of a model's intermediate tensors is measured by `compression.metrics.activation_size`.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from compression.metrics.activation_size import activation_bytes_per_sample, activation_size, batch_for

__all__ = ["activation_bytes_per_sample", "activation_size", "batch_for", "lean_session"]


def lean_session(path: Path, threads: int = 1, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session without onnxruntime's memory arena: tensors are freed when done instead of kept in a pool
    that grows in powers of two, so a batch sized to a memory budget stays near it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
