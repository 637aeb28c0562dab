"""Per-channel importance of each group: weight magnitude summed over the coupled layers, or mean activation."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from compression.datasets import Dataset
from compression.metrics.inference import make_session
from compression.pruning.dependency import Group

Importance = Literal["l1", "l2", "activation"]


def magnitude_scores(group: Group, norm: Literal["l1", "l2"]) -> np.ndarray:
    """Sum over every weight (and BatchNorm scale) the group touches of |w| (l1) or w^2 (l2, rooted at the end).

    Each layer's contribution is divided by its mean so a wide layer does not drown a narrow one.
    """
    total = np.zeros(group.size, dtype=np.float64)
    for slot in group.slots:
        if slot.role == "param":
            continue
        array = np.asarray(slot.node.inputs[slot.input_index].const_value.numpy(), dtype=np.float64)
        values = np.abs(array) if norm == "l1" else np.square(array)
        moved = np.moveaxis(values, slot.axis, 0)
        span = moved[slot.offset : slot.offset + group.size * slot.block]
        per_channel = span.reshape(group.size, -1).sum(axis=1)
        mean = per_channel.mean()
        total += per_channel / mean if mean > 0 else per_channel
    return np.sqrt(total) if norm == "l2" else total


def consumer_inputs(group: Group) -> list[tuple[ir.Value, int, int, int]]:
    """The group's tensors as its consuming layers read them (after activations, pooling, flattening).

    Pre-activation tensors would mislead: a channel a ReLU always silences has large |x| before it.
    """
    read = {slot.node.inputs[0] for slot in group.slots if slot.role == "weight_in"}
    chosen = [entry for entry in group.tensors if entry[0] in read]
    return chosen or group.tensors


def activation_scores(
    model: ir.Model,
    groups: list[Group],
    dataset: Dataset,
    batch_size: int,
    max_samples: int,
    check_cancelled: Callable[[], None],
) -> dict[int, np.ndarray]:
    """Mean |activation| per channel over every tensor each group spans, on up to `max_samples` samples."""
    wanted: dict[str, list[tuple[int, int, int, int]]] = {}
    for group in groups:
        for value, axis, offset, block in consumer_inputs(group):
            if value.name and not value.is_graph_input():
                wanted.setdefault(value.name, []).append((group.id, axis, offset, block))
    sums: dict[int, np.ndarray] = {g.id: np.zeros(g.size) for g in groups}
    sizes = {g.id: g.size for g in groups}
    if not wanted:
        return sums
    proto = ir.to_proto(model)
    existing = {o.name for o in proto.graph.output}
    for name in wanted:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    names = list(wanted)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(proto, str(path))
        session = make_session(path)
        per_tensor: dict[tuple[str, int], np.ndarray] = {}
        for feed, _ in dataset.take(max_samples).batches(batch_size):
            check_cancelled()
            for name, array in zip(names, session.run(names, feed), strict=True):
                for gid, axis, offset, block in wanted[name]:
                    moved = np.moveaxis(np.abs(np.asarray(array, dtype=np.float64)), axis, 0)
                    span = moved[offset : offset + sizes[gid] * block].reshape(sizes[gid], block, -1)
                    key = (name, gid)
                    per_tensor[key] = per_tensor.get(key, 0) + span.mean(axis=(1, 2))
    for (_, gid), score in per_tensor.items():
        mean = score.mean()
        sums[gid] += score / mean if mean > 0 else score
    return sums
