"""Re-estimate BatchNormalization statistics of a pruned model on calibration/train data.

Pruning changes what every BatchNorm sees, so the running mean/variance stored at training time no
longer normalize it; re-estimating them (as EagleEye's adaptive BN does) recovers much of the lost
accuracy without any training. BatchNorms are updated in graph order, each measured with the ones
before it already updated, since each one's input depends on the normalization upstream.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compression.datasets import Dataset
from compression.metrics.inference import make_session
from compression.model_info import iter_nodes


def recalibrate_batchnorm(
    path: Path,
    dataset: Dataset,
    batch_size: int,
    max_samples: int,
    check_canceled: Callable[[], None],
) -> list[str]:
    """Rewrite `path` with fresh running statistics for every inference-mode BatchNorm; returns their names."""
    model = onnx.load(str(path))
    initializers = {t.name for t in model.graph.initializer}
    targets = [
        node
        for node in model.graph.node
        if node.op_type == "BatchNormalization"
        and node.domain in ("", "ai.onnx")
        and len(node.output) == 1
        and not any(a.name == "training_mode" and a.i for a in node.attribute)
        and all(name in initializers for name in node.input[1:5])
    ]
    if not targets:
        return []
    data = dataset.take(max_samples)
    dtypes = {t.name: numpy_helper.to_array(t).dtype for t in model.graph.initializer}
    replaced: set[str] = set()
    updated: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        probe_path = Path(tmp) / "probe.onnx"
        for index, node in enumerate(targets):
            check_canceled()
            probe = onnx.ModelProto()
            probe.CopyFrom(model)
            probe.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
            onnx.save(probe, str(probe_path))
            session = make_session(probe_path)
            total = squares = None
            count = 0
            for feed, _ in data.batches(batch_size):
                x = np.asarray(session.run([node.input[0]], feed)[0], dtype=np.float64)
                flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
                total = flat.sum(axis=1) if total is None else total + flat.sum(axis=1)
                squares = (flat**2).sum(axis=1) if squares is None else squares + (flat**2).sum(axis=1)
                count += flat.shape[1]
            if not count:
                break
            mean = total / count
            var = np.maximum(squares / count - mean**2, 0.0)
            stem = node.name or f"BatchNormalization_{index}"
            for position, array in ((3, mean), (4, var)):
                name = f"{stem}_recalibrated_{'mean' if position == 3 else 'var'}"
                model.graph.initializer.append(
                    numpy_helper.from_array(array.astype(dtypes[node.input[position]]), name)
                )
                replaced.add(node.input[position])
                node.input[position] = name
            updated.append(stem)
    _drop_if_unused(model, replaced)
    onnx.save(model, str(path))
    return updated


def _drop_if_unused(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the replaced statistics unless something else (a subgraph included) still reads them."""
    used = {name for node in iter_nodes(model.graph) for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name not in names or t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
