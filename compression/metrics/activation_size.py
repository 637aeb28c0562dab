"""How many bytes of intermediate tensors and outputs one sample produces: what a batch of it holds in memory.

Measured, not guessed: a copy of the model reports the `Shape` of every main-graph node output on one real
feed (symbolic dims resolve to the data's), which costs one inference and returns a few integers. Only the
float tensors count (the ones calibrated, compared and held as outputs); a graph the probe cannot run falls
back to a conservative multiple of the feed's own size. Used to size calibration, sensitivity, bias
correction, range refinement and evaluation batches from their memory settings.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from pydantic import BaseModel

from compression.datasets import Dataset
from compression.metrics.inference import make_session

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})
FALLBACK_FACTOR = 64  # activations per input byte assumed when the probe cannot run (a deep CNN's order)


class ActivationSize(BaseModel):
    """Bytes per sample: all float node outputs (`activations`) and the float graph outputs among them."""

    activations: int
    outputs: int
    largest: int  # the largest single float tensor
    measured: bool  # False: the probe could not run and the figures are the fallback bound


def activation_size(
    model_path: Path, feed: dict[str, np.ndarray], samples_in_feed: int = 1, work: Path | None = None
) -> ActivationSize:
    """Per-sample bytes of `model_path`'s float tensors on `feed` (which holds `samples_in_feed` samples)."""
    per = max(samples_in_feed, 1)
    try:
        if work is None:
            with tempfile.TemporaryDirectory(prefix="activation_probe_") as tmp:
                sizes, outputs = _probe(model_path, feed, Path(tmp))
        else:
            sizes, outputs = _probe(model_path, feed, work)
    except Exception:  # noqa: BLE001 (a graph the probe cannot run still gets a bound)
        fed = sum(np.asarray(value).nbytes for value in feed.values())
        bound = max(1, FALLBACK_FACTOR * fed // per)
        return ActivationSize(activations=bound, outputs=bound, largest=bound, measured=False)
    return ActivationSize(
        activations=max(1, sum(sizes.values()) // per),
        outputs=max(1, sum(sizes[name] for name in outputs if name in sizes) // per),
        largest=max(1, max(sizes.values()) // per),
        measured=True,
    )


def batch_for(budget_bytes: int, per_sample_bytes: int, copies: float = 1.0, cap: int = 64) -> int:
    """Samples per batch so that `copies` times a batch's tensors fit `budget_bytes` (at least 1, at most cap)."""
    return int(max(1, min(cap, budget_bytes // max(1, int(copies * per_sample_bytes)))))


def memory_batch(model_path: Path, dataset: Dataset, memory_mb: int, batch: int) -> int:
    """Samples per run of `model_path` over `dataset`: `batch`, fewer when one batch's float tensors (measured on
    one sample) would pass `memory_mb`. Stacked data runs one entry at a time: `batch` unchanged."""
    if dataset.layout != "batched" or dataset.n_samples < 1:
        return batch
    size = activation_size(model_path, dataset.take(1).first_feed(1))
    return batch_for(memory_mb << 20, size.activations, cap=batch)


def activation_bytes_per_sample(model_path: Path, feed: dict[str, np.ndarray], samples_in_feed: int, work: Path) -> int:
    """Bytes of all float main-graph node outputs for one sample of `feed` (which holds `samples_in_feed`)."""
    return activation_size(model_path, feed, samples_in_feed, work).activations


def _probe(model_path: Path, feed: dict[str, np.ndarray], work: Path) -> tuple[dict[str, int], set[str]]:
    model = onnx.load(str(model_path))
    graph_outputs = {value.name for value in model.graph.output}
    untyped = [value for value in model.graph.output if not value.type.tensor_type.elem_type]
    for value in untyped:  # outputs added without a type (tapped models): let inference type them
        model.graph.output.remove(value)
    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 (shape inference is only needed for element types)
        typed = model
    types = {vi.name: vi.type.tensor_type.elem_type for vi in typed.graph.value_info}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in typed.graph.output})
    names = [name for node in model.graph.node for name in node.output if name and types.get(name) in FLOAT_TYPES]
    itemsize = {types[name]: np.dtype(helper.tensor_dtype_to_np_dtype(types[name])).itemsize for name in names}
    del model.graph.output[:]
    probes = []
    for index, name in enumerate(names):
        probe = f"__activation_probe_{index}"
        model.graph.node.append(helper.make_node("Shape", [name], [probe], name=probe))
        model.graph.output.append(helper.make_tensor_value_info(probe, TensorProto.INT64, None))
        probes.append(probe)
    if not probes:
        raise ValueError("no typed float tensors to measure")
    work.mkdir(parents=True, exist_ok=True)
    path = work / "activation_probe.onnx"
    onnx.save(model, str(path))
    try:
        shapes = make_session(path).run(probes, feed)
    finally:
        path.unlink(missing_ok=True)
    sizes = {name: int(np.prod(shape)) * itemsize[types[name]] for name, shape in zip(names, shapes, strict=True)}
    return sizes, graph_outputs
