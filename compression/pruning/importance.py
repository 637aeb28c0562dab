"""Per-channel importance of each group: weight magnitude summed over the coupled layers, or activation.

Activation statistics come from one probe run of the unpruned model with the consumers' inputs exposed
as extra outputs; the same statistics feed bias compensation (`compensation`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from compression.datasets import Dataset
from compression.metrics.inference import make_session
from compression.pruning.layout import Group

Importance = Literal["l1", "l2", "activation"]


@dataclass
class PositionStats:
    """Mean and mean |x| of a tensor at each position of its channel axis, over everything else."""

    mean: np.ndarray
    mean_abs: np.ndarray


def _normalized(values: np.ndarray) -> np.ndarray:
    mean = values.mean()
    return values / mean if mean > 0 else values


def weight_norms(group: Group, norm: Literal["l1", "l2"], roles: tuple[str, ...]) -> np.ndarray:
    """Per channel, the sum over the group's weights with the given roles of sum|w| or sum w^2 (each layer
    divided by its mean so a wide layer does not drown a narrow one)."""
    total = np.zeros(group.size, dtype=np.float64)
    for slot in group.slots:
        if slot.role not in roles:
            continue
        array = np.asarray(slot.node.inputs[slot.input_index].const_value.numpy(), dtype=np.float64)
        values = np.abs(array) if norm == "l1" else np.square(array)
        span = np.moveaxis(values, slot.axis, 0)[slot.offset : slot.offset + group.size * slot.block]
        total += _normalized(span.reshape(group.size, -1).sum(axis=1))
    return total


def magnitude_scores(group: Group, norm: Literal["l1", "l2"]) -> np.ndarray:
    """Weight magnitude of each channel over every layer (and BatchNorm scale) the group couples."""
    total = weight_norms(group, norm, ("weight_out", "weight_in", "scale"))
    return np.sqrt(total) if norm == "l2" else total


def consumer_inputs(group: Group) -> list[tuple[ir.Value, int, int, int]]:
    """The group's tensors as its consuming layers read them (after activations, pooling, flattening).

    Pre-activation tensors would mislead: a channel a ReLU always silences has large |x| before it.
    """
    read = {slot.node.inputs[0] for slot in group.slots if slot.role == "weight_in"}
    chosen = [entry for entry in group.tensors if entry[0] in read]
    return chosen or group.tensors


def activation_scores(group: Group, stats: dict[str, PositionStats]) -> np.ndarray:
    """Mean |activation| each consumer reads from a channel, times the l2 norm of the weights reading it.

    A channel matters by how much it moves the next layer: a large activation into near-zero weights
    does not, so the outgoing weight norm (NISP/ThiNet-style) multiplies the activation.
    """
    activation = np.zeros(group.size, dtype=np.float64)
    for value, _, offset, block in consumer_inputs(group):
        if value.name in stats:
            span = stats[value.name].mean_abs[offset : offset + group.size * block]
            activation += _normalized(span.reshape(group.size, block).mean(axis=1))
    outgoing = np.sqrt(weight_norms(group, "l2", ("weight_in",)))
    return activation * outgoing if outgoing.any() else activation


def probe_statistics(
    model: ir.Model,
    values: dict[str, int],
    dataset: Dataset,
    batch_size: int,
    max_samples: int,
    check_canceled: Callable[[], None],
) -> dict[str, PositionStats]:
    """Run the model on up to `max_samples` samples and average each named tensor over all but its axis."""
    if not values:
        return {}
    main = {v.name for node in model.graph for v in node.outputs if v.name}
    values = {name: axis for name, axis in values.items() if name in main}  # a body's tensors cannot be outputs
    if not values:
        return {}
    proto = ir.to_proto(model)
    existing = {o.name for o in proto.graph.output}
    for name in values:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    names = list(values)
    sums: dict[str, list[np.ndarray]] = {name: [0, 0] for name in names}  # type: ignore[misc]
    counts = dict.fromkeys(names, 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(proto, str(path))
        session = make_session(path)
        for feed, _ in dataset.take(max_samples).batches(batch_size):
            check_canceled()
            for name, array in zip(names, session.run(names, feed), strict=True):
                moved = np.moveaxis(np.asarray(array, dtype=np.float64), values[name], 0)
                flat = moved.reshape(moved.shape[0], -1)
                sums[name][0] = sums[name][0] + flat.sum(axis=1)
                sums[name][1] = sums[name][1] + np.abs(flat).sum(axis=1)
                counts[name] += flat.shape[1]
    return {name: PositionStats(mean=s[0] / counts[name], mean_abs=s[1] / counts[name]) for name, s in sums.items()}


def probe_targets(groups: list[Group]) -> dict[str, int]:
    """Tensor name -> channel axis of every tensor the groups' consumers read."""
    targets: dict[str, int] = {}
    for group in groups:
        for value, axis, _, _ in consumer_inputs(group):
            if value.name and not value.is_graph_input():
                targets[value.name] = axis
    return targets
