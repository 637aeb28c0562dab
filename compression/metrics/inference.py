"""onnxruntime sessions and batched inference with the thread settings every measurement shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from compression.datasets import Dataset
from compression.errors import CompressionError, InvalidModelError, JobInterrupted
from compression.metrics.run_guard import GuardedSession


def make_session(path: Path, threads: int = 1, arena: bool = True) -> GuardedSession:
    """A CPU session with the shared thread settings, whose runs obey the current `run_limits`.

    `arena=False`: no memory arena, so tensors are freed when done instead of kept in a pool that grows in
    powers of two (runs whose batch is sized to a memory setting stay near it).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModelError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:500]}") from exc
    return GuardedSession(session)


def run_dataset(session: GuardedSession, dataset: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """All outputs over the dataset; stacked layouts get a leading sample axis added."""
    names = [output.name for output in session.get_outputs()]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feed, _ in dataset.batches(batch_size):
        try:
            results = session.run(names, feed)
        except (CompressionError, JobInterrupted):  # stopped by the run guard: time limit or cancel
            raise
        except Exception as exc:
            raise InvalidModelError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0][:500]}") from exc
        for name, value in zip(names, results, strict=True):
            value = np.asarray(value)
            collected[name].append(value if dataset.layout == "batched" else value[None, ...])
    return {name: _concat(parts) for name, parts in collected.items()}


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    if parts and parts[0].ndim == 0:
        return np.stack(parts)
    try:
        return np.concatenate(parts, axis=0)
    except ValueError:  # outputs whose non-leading dims vary per batch: keep them comparable per batch
        return np.concatenate([p.reshape(-1) for p in parts])
