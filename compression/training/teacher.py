"""Teacher targets computed once with onnxruntime: its outputs plus any hinted intermediate tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compression.datasets import Dataset
from compression.errors import CompressionError, InvalidModelError


def graph_tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(name for name in node.output if name)
    return names


def teacher_targets(
    teacher_path: Path | onnx.ModelProto,
    dataset: Dataset,
    extra: Sequence[str],
    threads: int,
    batch_size: int,
    max_bytes: int,
    batch_axes: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Every output and `extra` tensor of the teacher (a path or a loaded model) over `dataset`, one leading
    entry per sample.

    Batched data: an output whose samples lie along another axis (time-major [T, N, C] sequences) is
    moved so they lead; `batch_axes` (filled here when given empty) records where they were.
    """
    batch_axes = {} if batch_axes is None else batch_axes
    if isinstance(teacher_path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(teacher_path)
    else:
        model = onnx.load(str(teacher_path))
    outputs = [v.name for v in model.graph.output]
    unknown = sorted(set(extra) - graph_tensor_names(model.graph))
    if unknown:
        raise CompressionError(f"hints name tensors {unknown} that the teacher graph does not have")
    for name in extra:
        if name not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
            outputs.append(name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModelError(f"onnxruntime cannot load the teacher: {str(exc).splitlines()[0][:500]}") from exc
    collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    used = 0
    for feed, _ in dataset.batches(batch_size):
        for name, value in zip(outputs, session.run(outputs, feed), strict=True):
            value = np.asarray(value)
            if dataset.layout == "batched":
                if name not in batch_axes:
                    batch_axes[name] = _batch_axis(value.shape, _feed_samples(feed, dataset))
                value = np.moveaxis(value, batch_axes[name], 0)
            collected[name].append(value if dataset.layout == "batched" else value[None, ...])
            used += value.nbytes
        if used > max_bytes:
            raise CompressionError(
                f"teacher targets exceed {max_bytes >> 20} MB (distill_max_target_mb): use fewer train samples, "
                "fewer hints, or raise the setting"
            )
    ragged = any(len({part.shape[1:] for part in parts}) > 1 for parts in collected.values())
    if ragged and dataset.layout == "batched" and batch_size < dataset.n_samples:
        # a data-dependent length (a decoder Loop runs until every sample of its batch is done) differs between
        # batches: label the whole set in one run, so every sample shares one length, as before batches were
        # sized by memory (slanet_plus: 44 and 36 steps in two batches)
        return teacher_targets(teacher_path, dataset, extra, threads, dataset.n_samples, max_bytes, batch_axes)
    return {name: np.concatenate(parts, axis=0) for name, parts in collected.items()}


def _feed_samples(feed: dict[str, np.ndarray], dataset: Dataset) -> int:
    sizes = [a.shape[0] for name, a in feed.items() if name not in dataset.scalars and a.ndim > 0]
    return sizes[0] if sizes else 1


def _batch_axis(shape: tuple[int, ...], samples: int) -> int:
    """Axis 0 when it holds the samples (or nothing tells otherwise), else the one axis that does."""
    matches = [axis for axis, size in enumerate(shape) if size == samples]
    if not shape or 0 in matches or len(matches) != 1 or samples == 1:
        return 0
    return matches[0]
