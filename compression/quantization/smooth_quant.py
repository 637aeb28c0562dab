"""SmoothQuant for the MatMuls behind a LayerNormalization: move activation outliers into the weights.

Transformer activations have a few channels with values far larger than the rest; one uint8 scale per
tensor then rounds every other channel coarsely. SmoothQuant (Xiao et al., 2023) divides input channel i
by s_i and multiplies row i of the weight by s_i, which leaves X @ W unchanged:

    s_i = max|X_i|^alpha / max|W_i,:|^(1 - alpha)

After a LayerNormalization the division folds into its scale and bias, so the float graph keeps its ops
and costs nothing at run time. onnxruntime's own `SmoothQuant` option needs Intel Neural Compressor 2.x
(`neural_compressor.adaptor.ox_utils`, not in 3.x and not installed here) and inserts Mul nodes where it
cannot fold; this does only the folding case, on the graph every mode quantizes.

A LayerNormalization qualifies when every reader of its output is a MatMul taking it as the activation
and a 2-D initializer as the weight, and no graph output or If/Loop/Scan body reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from pydantic import BaseModel, Field

from compression.datasets import Dataset
from compression.graph_names import outer_references, read_counts
from compression.metrics.inference import make_session
from compression.quantization.activations import activation_bytes_per_sample, batch_for
from compression.quantization.prepare import Prepared
from compression.quantization.sensitivity import expose
from compression.settings import EngineSettings

MIN_SCALE, MAX_SCALE = 1e-4, 1e4
BATCH = 32


class SmoothReport(BaseModel):
    alpha: float
    layer_norms: int = Field(0, description="LayerNormalization outputs smoothed")
    matmuls: int = Field(0, description="MatMul weights rescaled")
    max_outlier_ratio: float | None = Field(
        None, description="largest max|X_i| / median_i max|X_i| before smoothing (how skewed the channels were)"
    )


@dataclass
class Group:
    norm: onnx.NodeProto
    matmuls: list[onnx.NodeProto]


def smoothable(model: onnx.ModelProto) -> list[Group]:
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    blocked = outer_references(graph) | {value.name for value in graph.output}
    groups = []
    for node in graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        if len(node.input) > 2 and node.input[2] and node.input[2] not in initializers:
            continue
        out = node.output[0]
        users = readers.get(out, [])
        if out in blocked or not users:
            continue
        if all(
            user.op_type == "MatMul"
            and user.input[0] == out
            and user.input[1] in initializers
            and len(initializers[user.input[1]].dims) == 2
            for user in users
        ):
            groups.append(Group(node, users))
    return groups


def channel_absmax(
    path: Path, names: list[str], dataset: Dataset, batch: int, threads: int, work: Path
) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor, streamed over the dataset."""
    work.mkdir(parents=True, exist_ok=True)
    tapped = work / "smooth_tapped.onnx"
    wanted = sorted(expose(path, tapped, set(names)))
    found: dict[str, np.ndarray] = {}
    session = make_session(tapped, threads)
    for feed, _ in dataset.batches(batch):
        for name, value in zip(wanted, session.run(wanted, feed), strict=True):
            value = np.abs(np.asarray(value, dtype=np.float32))
            per_channel = value.reshape(-1, value.shape[-1]).max(axis=0)
            found[name] = per_channel if name not in found else np.maximum(found[name], per_channel)
    tapped.unlink(missing_ok=True)
    return found


def smooth(
    src: Path,
    dst: Path,
    dataset: Dataset,
    alpha: float,
    min_outlier_ratio: float,
    batch: int,
    threads: int,
    work: Path,
    memory_bytes: int | None = None,
) -> SmoothReport | None:
    """Write the smoothed graph to `dst` when a LayerNorm was smoothed; None when none qualifies.

    Only activations with outlier channels (largest channel max over the median channel max at least
    `min_outlier_ratio`) are smoothed: without outliers there is nothing to migrate, and moving range into
    the weights only coarsens their per-channel scales (measured on the transformer block, ratio 1.6).
    """
    model = onnx.load(str(src))
    groups = smoothable(model)
    if not groups:
        return None
    if dataset.n_samples and memory_bytes is not None:  # one batch of the tapped tensors within the setting
        per_sample = activation_bytes_per_sample(src, dataset.take(1).first_feed(1), 1, work / "probe")
        batch = batch_for(memory_bytes, per_sample, cap=batch)
    stats = channel_absmax(src, [g.norm.output[0] for g in groups], dataset, batch, threads, work)
    initializers = {init.name: init for init in model.graph.initializer}
    uses = dict(read_counts(model.graph))  # If/Loop/Scan bodies included: they keep the original values
    report = SmoothReport(alpha=alpha)
    ratios = []
    for group in groups:
        x_max = stats.get(group.norm.output[0])
        weights = [numpy_helper.to_array(initializers[m.input[1]]).astype(np.float64) for m in group.matmuls]
        if x_max is None or any(w.shape[0] != x_max.size for w in weights):
            continue
        median = float(np.median(x_max))
        ratio = float(x_max.max()) / median if median > 0 else 1.0
        ratios.append(ratio)
        if ratio < min_outlier_ratio:
            continue
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = np.where(
            (x_max > 0) & (w_max > 0),
            np.power(np.maximum(x_max, 1e-12), alpha) / np.power(np.maximum(w_max, 1e-12), 1.0 - alpha),
            1.0,
        )
        scale = np.clip(scale, MIN_SCALE, MAX_SCALE)
        for index in (1, 2):  # LayerNormalization scale and bias: y / s
            if len(group.norm.input) > index and group.norm.input[index]:
                name = _private(model, group.norm, index, initializers, uses)
                value = numpy_helper.to_array(initializers[name]).astype(np.float64)
                _store(initializers[name], value / scale)
        for matmul, weight in zip(group.matmuls, weights, strict=True):
            name = _private(model, matmul, 1, initializers, uses)
            _store(initializers[name], weight * scale[:, None])
            report.matmuls += 1
        report.layer_norms += 1
    report.max_outlier_ratio = max(ratios) if ratios else None
    if report.layer_norms:
        onnx.save(model, str(dst))
    return report


def _private(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    index: int,
    initializers: dict[str, onnx.TensorProto],
    uses: dict[str, int],
) -> str:
    """The node's initializer input, copied first when anything else reads it too, a node inside an If/Loop/Scan
    body included (so those readers keep the original)."""
    name = node.input[index]
    if uses.get(name, 0) <= 1:
        return name
    copy = onnx.TensorProto()
    copy.CopyFrom(initializers[name])
    copy.name = f"{name}.smoothed.{node.name or index}"
    model.graph.initializer.append(copy)
    initializers[copy.name] = model.graph.initializer[-1]
    uses[name] -= 1
    uses[copy.name] = 1
    node.input[index] = copy.name
    return copy.name


def _store(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    dtype = numpy_helper.to_array(tensor).dtype
    tensor.CopyFrom(numpy_helper.from_array(value.astype(dtype), tensor.name))


def smooth_prepared(prepared: Prepared, dataset: Dataset | None, settings: EngineSettings, work: Path) -> None:
    """Smooth the prepared graph in place when a LayerNorm's readers qualify (`prepared.details['smooth_quant']`)."""
    knobs = settings.quantize
    if not knobs.smooth_quant or dataset is None:
        return
    dst = work / "smoothed.onnx"
    report = smooth(
        prepared.path,
        dst,
        dataset.take(knobs.smooth_quant_samples),
        knobs.smooth_quant_alpha,
        knobs.smooth_quant_min_outlier_ratio,
        BATCH,
        settings.latency.threads,
        work,
        knobs.activation_memory_mb * 2**20,
    )
    if report is None:
        return
    prepared.details["smooth_quant"] = report.model_dump()
    if report.layer_norms:
        prepared.path = dst
