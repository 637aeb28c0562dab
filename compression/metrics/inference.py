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


def run_dataset(
    session: GuardedSession, dataset: Dataset, batch_size: int, ragged: bool = False
) -> dict[str, np.ndarray]:
    """All outputs over the dataset; stacked layouts get a leading sample axis added.

    Outputs whose non-leading dims vary per batch (a `Loop` that stops at a data-dependent step) cannot be
    concatenated: with `ragged`, they come back as a 1-d object array of per-sample arrays (`ragged_samples`)
    so each input can be judged as one sample; without it, flattened and concatenated.
    """
    names = [output.name for output in session.get_outputs()]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    rows: list[int] = []  # samples in each batch
    starts = range(0, dataset.n_samples, _step(dataset, batch_size))
    for start, (feed, _) in zip(starts, dataset.batches(batch_size), strict=True):
        try:
            results = session.run(names, feed)
        except (CompressionError, JobInterrupted):  # stopped by the run guard: time limit or cancel
            raise
        except Exception as exc:
            raise InvalidModelError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0][:500]}") from exc
        rows.append(min(_step(dataset, batch_size), dataset.n_samples - start))
        for name, value in zip(names, results, strict=True):
            value = np.asarray(value)
            collected[name].append(value if dataset.layout == "batched" else value[None, ...])
    return {name: _concat(parts, rows, ragged) for name, parts in collected.items()}


def _step(dataset: Dataset, batch_size: int) -> int:
    return batch_size if dataset.layout == "batched" else 1


def _concat(parts: list[np.ndarray], rows: list[int], ragged: bool) -> np.ndarray:
    if parts and parts[0].ndim == 0:
        return np.stack(parts)
    try:
        return np.concatenate(parts, axis=0)
    except ValueError:  # outputs whose non-leading dims vary per batch
        if ragged:
            return ragged_samples(parts, rows)
        return np.concatenate([p.reshape(-1) for p in parts])  # comparable per batch only


def ragged_samples(parts: list[np.ndarray], rows: list[int]) -> np.ndarray:
    """A 1-d object array with one array per sample: each batch's rows, or the whole batch's output when
    its leading axis is not the batch's samples (an output without a batch axis)."""
    samples: list[np.ndarray] = []
    for part, n in zip(parts, rows, strict=True):
        if part.ndim and part.shape[0] == n:
            samples.extend(part[i] for i in range(n))
        else:
            samples.append(part)
    result = np.empty(len(samples), dtype=object)
    for i, sample in enumerate(samples):
        result[i] = sample
    return result
