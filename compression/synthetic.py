"""Synthetic inputs for a job without data, sized so the model actually runs on them.

Dimensions a model leaves symbolic (a sequence length, an image side) have no declared size. One is
the smallest guess, but many graphs refuse it (a reflect Pad needs at least 2 values, a strided conv
stack needs room to downsample), so sizes are tried from small to large and the first that runs one
sample through onnxruntime is used.
"""

from __future__ import annotations

from pathlib import Path

from compression.datasets import Dataset
from compression.metrics.inference import make_session
from compression.model_info import TensorSpec, inspect_model

SYMBOLIC_SIZES = (1, 16, 64, 256, 1024)


def synthetic_dataset(model_path: Path, n_samples: int, seed: int = 0) -> Dataset:
    """Random inputs of the declared shapes; symbolic dims get the smallest of SYMBOLIC_SIZES the model runs on."""
    inputs = inspect_model(model_path).inputs
    if not _has_free_dims(inputs):
        return Dataset.synthetic_for(inputs, n_samples, seed)
    session = make_session(model_path)
    for size in SYMBOLIC_SIZES:
        candidate = Dataset.synthetic_for(inputs, n_samples, seed, symbolic_size=size)
        try:
            session.run(None, candidate.first_feed(1))
        except Exception:  # noqa: BLE001 (onnxruntime says why; the next size may fit)
            continue
        return candidate
    return Dataset.synthetic_for(inputs, n_samples, seed)  # none ran: the evaluator reports the model's error


def _has_free_dims(inputs: list[TensorSpec]) -> bool:
    """Whether any input has a symbolic dimension besides a leading batch axis."""
    tensors = [spec for spec in inputs if spec.shape]
    batched = bool(tensors) and all(not isinstance(spec.shape[0], int) for spec in tensors)
    for spec in tensors:
        dims = spec.shape[1:] if batched else spec.shape
        if any(not (isinstance(d, int) and d > 0) for d in dims):
            return True
    return False
