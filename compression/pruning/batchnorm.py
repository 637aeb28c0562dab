"""Re-estimate BatchNormalization statistics of a pruned model on calibration/train data.

Pruning changes what every BatchNorm sees, so the running mean/variance stored at training time no
longer normalize it; re-estimating them (as EagleEye's adaptive BN does) recovers much of the lost
accuracy without any training. Each BatchNorm's input depends on the normalization upstream. Estimating
them one at a time in graph order costs one model run per BatchNorm (minutes on a detector with a hundred
of them), so one pass does it all: every BatchNorm normalizes with its batch's own statistics (what a
training-mode BatchNorm does) and returns them; their sample-weighted averages are the new statistics,
each BatchNorm having seen its upstream normalized the new way. With the whole set in one batch this equals
the in-order result; with smaller batches (memory, or fixed-batch models) each batch is normalized by its
own statistics, as adaptive BN does (same accuracy as in order on the residual CNN, even one sample per
batch). BatchNorm inputs of unknown rank or not float32 fall back to the in-order runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compression.datasets import Dataset
from compression.metrics.inference import make_session
from compression.model_info import iter_nodes

Stats = tuple[list[np.ndarray], list[np.ndarray]]
BATCH_INPUT_BYTES = 32 * 2**20  # input bytes per batch-statistics run (activations are tens of times more)


def _targets(model: onnx.ModelProto) -> list[int]:
    """Positions (in graph.node) of the inference-mode BatchNorms whose statistics are initializers."""
    initializers = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    return [
        index
        for index, node in enumerate(model.graph.node)
        if node.op_type == "BatchNormalization"
        and node.domain in ("", "ai.onnx")
        and len(node.output) == 1
        and not any(a.name == "training_mode" and a.i for a in node.attribute)
        and all(name in initializers for name in node.input[1:5])
        and node.input[0] not in outputs
    ]


def _batch_stat_probe(model: onnx.ModelProto, targets: list[int], ranks: list[int]) -> onnx.ModelProto:
    """The model with every target normalizing by its batch's mean/variance, which it also returns."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for i, position in enumerate(targets):
        node = probe.graph.node[position]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        rank = ranks[i]
        axes = [0, *range(2, rank)]
        broadcast = [1, -1] + [1] * (rank - 2)
        x, p = node.input[0], f"__bn{i}_"
        extra = [
            numpy_helper.from_array(arrays[node.input[1]].astype(np.float32).reshape(broadcast), p + "scale"),
            numpy_helper.from_array(arrays[node.input[2]].astype(np.float32).reshape(broadcast), p + "bias"),
            numpy_helper.from_array(np.asarray(eps, np.float32), p + "eps"),
        ]
        if opset >= 18:
            extra.append(numpy_helper.from_array(np.asarray(axes, np.int64), p + "axes"))
        probe.graph.initializer.extend(extra)

        def reduce_mean(source: str, out: str) -> onnx.NodeProto:
            if opset >= 18:
                return helper.make_node("ReduceMean", [source, p + "axes"], [out], keepdims=1)  # noqa: B023
            return helper.make_node("ReduceMean", [source], [out], axes=axes, keepdims=1)  # noqa: B023

        replaced[position] = [
            reduce_mean(x, p + "mean"),
            helper.make_node("Sub", [x, p + "mean"], [p + "centered"]),
            helper.make_node("Mul", [p + "centered", p + "centered"], [p + "squared"]),
            reduce_mean(p + "squared", p + "var"),
            helper.make_node("Add", [p + "var", p + "eps"], [p + "var_eps"]),
            helper.make_node("Sqrt", [p + "var_eps"], [p + "std"]),
            helper.make_node("Div", [p + "centered", p + "std"], [p + "normalized"]),
            helper.make_node("Mul", [p + "normalized", p + "scale"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "bias"], [node.output[0]]),
        ]
        probe.graph.output.extend([onnx.ValueInfoProto(name=p + "mean"), onnx.ValueInfoProto(name=p + "var")])
    nodes = []
    for position, node in enumerate(probe.graph.node):
        nodes.extend(replaced.get(position, [node]))
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    return probe


def _input_ranks(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[int] | None:
    """Rank of every BatchNorm input (float32), or None when one is unknown or of another type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        return None
    infos = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    ranks = []
    for node in nodes:
        info = infos.get(node.input[0])
        if info is None or not info.HasField("shape") or info.elem_type != TensorProto.FLOAT:
            return None
        ranks.append(len(info.shape.dim))
    return ranks if all(r >= 2 for r in ranks) else None


def _batch_statistics(path: Path, data: Dataset, batch: int, count: int, check_canceled: Callable[[], None]) -> Stats:
    """Sample-weighted averages of every BatchNorm's batch mean and second moment (one pass)."""
    session = make_session(path)
    if data.layout == "batched":
        per_sample = sum(a.nbytes for a in data.first_feed(1).values())
        batch = max(1, min(batch, BATCH_INPUT_BYTES // max(per_sample, 1)))
    names = [f"__bn{i}_{kind}" for i in range(count) for kind in ("mean", "var")]
    means: list = [0.0] * count
    seconds: list = [0.0] * count
    total = 0
    for feed, _ in data.batches(batch):
        check_canceled()
        results = session.run(names, feed)
        weight = next(iter(feed.values())).shape[0] if data.layout == "batched" else 1
        for i in range(count):
            mean = np.asarray(results[2 * i], np.float64).reshape(-1)
            var = np.asarray(results[2 * i + 1], np.float64).reshape(-1)
            means[i] = means[i] + weight * mean
            seconds[i] = seconds[i] + weight * (var + mean**2)
        total += weight
    out_means = [m / total for m in means]
    out_vars = [np.maximum(s / total - m**2, 0.0) for s, m in zip(seconds, out_means, strict=True)]
    return [m.astype(np.float32) for m in out_means], [v.astype(np.float32) for v in out_vars]


def recalibrate_batchnorm(
    path: Path,
    dataset: Dataset,
    batch_size: int,
    max_samples: int,
    check_canceled: Callable[[], None],
) -> list[str]:
    """Rewrite `path` with fresh running statistics for every inference-mode BatchNorm; returns their names."""
    model = onnx.load(str(path))
    targets = _targets(model)
    if not targets:
        return []
    nodes = [model.graph.node[i] for i in targets]
    data = dataset.take(max_samples)
    ranks = _input_ranks(model, nodes)
    if ranks is None:
        estimated = _in_order_statistics(model, targets, data, batch_size, check_canceled)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            probe_path = Path(tmp) / "probe.onnx"
            onnx.save(_batch_stat_probe(model, targets, ranks), str(probe_path))
            estimated = _batch_statistics(probe_path, data, batch_size, len(nodes), check_canceled)
    if estimated is None:
        return []
    arrays = {t.name: t for t in model.graph.initializer}
    updated: list[str] = []
    replaced: set[str] = set()
    for index, node in enumerate(nodes):
        stem = node.name or f"BatchNormalization_{targets[index]}"
        for slot, values in ((3, estimated[0][index]), (4, estimated[1][index])):
            dtype = helper.tensor_dtype_to_np_dtype(arrays[node.input[slot]].data_type)
            name = f"{stem}_recalibrated_{'mean' if slot == 3 else 'var'}"
            model.graph.initializer.append(numpy_helper.from_array(values.astype(dtype), name))
            replaced.add(node.input[slot])
            node.input[slot] = name
        updated.append(stem)
    _drop_if_unused(model, replaced)
    onnx.save(model, str(path))
    return updated


def _in_order_statistics(
    model: onnx.ModelProto, targets: list[int], data: Dataset, batch_size: int, check_canceled: Callable[[], None]
) -> Stats | None:
    """One run per BatchNorm in graph order, each measured with the ones before it already updated."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    means, variances = [], []
    with tempfile.TemporaryDirectory() as tmp:
        probe_path = Path(tmp) / "probe.onnx"
        for index, position in enumerate(targets):
            check_canceled()
            node = work.graph.node[position]
            probe = onnx.ModelProto()
            probe.CopyFrom(work)
            probe.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
            onnx.save(probe, str(probe_path))
            session = make_session(probe_path)
            total = squares = 0.0
            count = 0
            for feed, _ in data.batches(batch_size):
                x = np.asarray(session.run([node.input[0]], feed)[0], dtype=np.float64)
                flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
                total, squares = total + flat.sum(axis=1), squares + (flat**2).sum(axis=1)
                count += flat.shape[1]
            if not count:
                return None
            mean = total / count
            means.append(mean.astype(np.float32))
            variances.append(np.maximum(squares / count - mean**2, 0.0).astype(np.float32))
            for slot, values in ((3, means[-1]), (4, variances[-1])):
                name = f"__bn_{index}_{slot}"
                work.graph.initializer.append(numpy_helper.from_array(values, name))
                node.input[slot] = name
    return means, variances


def _drop_if_unused(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the replaced statistics unless something else (a subgraph included) still reads them."""
    used = {name for node in iter_nodes(model.graph) for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name not in names or t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
