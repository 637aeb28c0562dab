"""How many bytes of intermediate tensors one sample produces: what calibration and node ranking hold per sample.

Measured, not guessed: a copy of the model reports the `Shape` of every main-graph node output on one real
feed (symbolic dims resolve to the data's), which costs one inference and returns a few integers. Only the
float tensors count (the ones calibrated and compared); a graph the probe cannot run falls back to a
conservative multiple of the feed's own size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from compression.metrics.inference import make_session

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})
FALLBACK_FACTOR = 64  # activations per input byte assumed when the probe cannot run (a deep CNN's order)


def lean_session(path: Path, threads: int = 1, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session without onnxruntime's memory arena: tensors are freed when done instead of kept in a pool
    that grows in powers of two, so a batch sized to a memory budget stays near it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def activation_bytes_per_sample(model_path: Path, feed: dict[str, np.ndarray], samples_in_feed: int, work: Path) -> int:
    """Bytes of all float main-graph node outputs for one sample of `feed` (which holds `samples_in_feed`)."""
    try:
        total = _probe(model_path, feed, work)
    except Exception:  # noqa: BLE001 (a graph the probe cannot run still gets a bound)
        total = FALLBACK_FACTOR * sum(np.asarray(value).nbytes for value in feed.values())
    return max(1, total // max(samples_in_feed, 1))


def _probe(model_path: Path, feed: dict[str, np.ndarray], work: Path) -> int:
    model = onnx.load(str(model_path))
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
    sizes = {types[name]: np.dtype(helper.tensor_dtype_to_np_dtype(types[name])).itemsize for name in names}
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
    session = make_session(path)
    shapes = session.run(probes, feed)
    return int(sum(int(np.prod(shape)) * sizes[types[name]] for name, shape in zip(names, shapes, strict=True)))
