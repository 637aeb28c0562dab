"""Per-node quantization error on the eval data, to decide which nodes to keep in float first.

Both models are run with every candidate node's output (and activation inputs) exposed; a node's
error is 1 - cosine of its output against the float model's, and its *local* error is what it adds
over the worst of its inputs, so a node is not blamed for the error it merely passes on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from pydantic import BaseModel

from compression.datasets import Dataset
from compression.metrics.fidelity import cosine
from compression.metrics.inference import make_session, run_dataset

FOLDED = frozenset({"Relu", "Clip"})


class NodeSensitivity(BaseModel):
    node: str
    op_type: str
    error: float
    local_error: float


def expose(src: Path, dst: Path, names: set[str]) -> set[str]:
    """Save a copy of `src` with the given top-graph tensors as extra outputs; returns those exposed."""
    model = onnx.load(str(src))
    produced = {out for node in model.graph.node for out in node.output}
    existing = {out.name for out in model.graph.output}
    exposed = (names & produced) - existing
    for name in sorted(exposed):
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    onnx.save(model, str(dst))
    return exposed | (names & existing)


def dequantized_names(path: Path) -> dict[str, str]:
    """Tensor name -> output of the DequantizeLinear fed by a QuantizeLinear of it (QDQ graphs)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    quantized_from = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    return {
        quantized_from[node.input[0]]: node.output[0]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in quantized_from
    }


def rank_nodes(
    float_model: Path, quant_model: Path, candidates: list[str], dataset: Dataset, work: Path, threads: int
) -> list[NodeSensitivity]:
    """Candidates ordered from most to least sensitive; nodes whose output cannot be matched come last."""
    model = onnx.load(str(float_model), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    nodes = {node.name: node for node in model.graph.node if node.name in set(candidates)}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    wanted: set[str] = set()
    for node in nodes.values():
        wanted.update(node.output[:1])
        wanted.update(name for name in node.input if name and name not in initializers)
        # onnxruntime folds a Relu/Clip after a Conv into the quantized range and drops it, so the
        # Conv's own output has no counterpart: it is measured where the activation's output is
        wanted.update(after.output[0] for after in consumers.get(node.output[0], []) if after.op_type in FOLDED)
    work.mkdir(parents=True, exist_ok=True)
    float_tapped, quant_tapped = work / "float_tapped.onnx", work / "quant_tapped.onnx"
    # in QDQ graphs what the next op sees of tensor T is DequantizeLinear(QuantizeLinear(T))
    seen_as = dequantized_names(quant_model)
    quant_names = {seen_as.get(name, name): name for name in wanted}
    exposed = expose(quant_model, quant_tapped, set(quant_names))
    matched = expose(float_model, float_tapped, wanted) & {quant_names[name] for name in exposed}
    ref = _run(float_tapped, dataset, threads)
    out = {
        quant_names[name]: value for name, value in _run(quant_tapped, dataset, threads).items() if name in quant_names
    }

    def error(name: str) -> float | None:
        if name in inputs:
            return 0.0
        if name not in matched or name not in ref or name not in out or ref[name].shape != out[name].shape:
            after = consumers.get(name, [])
            if len(after) == 1 and after[0].op_type in FOLDED and after[0].output[0] in matched:
                return error(after[0].output[0])
            return None
        if ref[name].dtype.kind != "f":
            return 0.0
        return max(0.0, 1.0 - cosine(ref[name], out[name]))

    ranked = []
    for name, node in nodes.items():
        err = error(node.output[0])
        upstream = [error(i) for i in node.input if i and i not in initializers]
        worst_in = max((e for e in upstream if e is not None), default=0.0)
        if err is None:
            ranked.append(NodeSensitivity(node=name, op_type=node.op_type, error=-1.0, local_error=-1.0))
        else:
            ranked.append(
                NodeSensitivity(node=name, op_type=node.op_type, error=err, local_error=max(err - worst_in, 0.0))
            )
    ranked.sort(key=lambda s: (s.local_error, s.error), reverse=True)
    return ranked


def _run(path: Path, dataset: Dataset, threads: int) -> dict[str, np.ndarray]:
    session = make_session(path, threads)
    return run_dataset(session, dataset, 64)
