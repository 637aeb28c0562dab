"""Per-node quantization error on the eval data, to decide which nodes to keep in float first.

Both models are run with every candidate node's output (and activation inputs) exposed; a node's
error is 1 - cosine of its output against the float model's, and its *local* error is what it adds
over the worst of its inputs, so a node is not blamed for the error it merely passes on. The data is
streamed: batches sized to the memory setting, cosines accumulated across them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from pydantic import BaseModel

from compression.datasets import Dataset
from compression.errors import InvalidModelError
from compression.graph_names import iter_graphs, outer_references, subgraphs
from compression.quantization.activations import activation_bytes_per_sample, lean_session

FOLDED = frozenset({"Relu", "Clip"})
DEFAULT_MEMORY_BYTES = 512 * 2**20  # the quant_activation_memory_mb default
MAX_BATCH = 64
HELD_COPIES = 4  # float and quantized outputs of one batch, plus float64 copies of one tensor pair


class RankingStopped(Exception):  # noqa: N818  (a stop asked for, not an error)
    """`rank_nodes`' `stop` said so between its stages: the ranking was abandoned."""


def _check(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        raise RankingStopped


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


def reads_of(node: onnx.NodeProto) -> list[str]:
    """The values a node reads: its inputs, and for If/Loop/Scan the outer values its bodies read."""
    names = [name for name in node.input if name]
    if any(subgraphs(node)):
        names += sorted(outer_references(helper.make_graph([node], "container", [], [])) - set(names))
    return names


def main_output(node: onnx.NodeProto) -> str:
    """The output a node's error is measured on: its first one that is produced (an LSTM may skip Y)."""
    return next((name for name in node.output if name), "")


def body_containers(graph: onnx.GraphProto, names: set[str]) -> dict[str, tuple[onnx.NodeProto, str]]:
    """Node name (inside any body, at any depth) -> (the top-level node whose body holds it, its op type)."""
    found: dict[str, tuple[onnx.NodeProto, str]] = {}
    if not names:
        return found
    for node in graph.node:
        for body in subgraphs(node):
            for scope in iter_graphs(body):
                found.update({inner.name: (node, inner.op_type) for inner in scope.node if inner.name in names})
    return found


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
    float_model: Path,
    quant_model: Path,
    candidates: list[str],
    dataset: Dataset,
    work: Path,
    threads: int,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    stop: Callable[[], bool] | None = None,
) -> list[NodeSensitivity]:
    """Candidates ordered from most to least sensitive; nodes whose output cannot be matched come last.

    Both tapped models run batch by batch and each tensor's cosine is accumulated (dot product and norms),
    so what is held at once is one batch of tapped tensors per model, sized to fit `memory_bytes`. `stop` is
    asked between stages (tapped models, sessions, batches): True raises `RankingStopped`.
    """
    model = onnx.load(str(float_model), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    nodes = {node.name: node for node in model.graph.node if node.name in set(candidates)}
    # a node inside an If/Loop/Scan body has no tensor the graph can expose: it is ranked by its top-level
    # container's outputs (error) over the values the container reads (local error)
    in_bodies = body_containers(model.graph, set(candidates) - set(nodes))
    containers = {container.name: container for container, _ in in_bodies.values()}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    wanted: set[str] = set()
    for node in [*nodes.values(), *containers.values()]:
        wanted.update(name for name in (node.output if any(subgraphs(node)) else [main_output(node)]) if name)
        wanted.update(name for name in reads_of(node) if name not in initializers)
        # onnxruntime folds a Relu/Clip after a Conv into the quantized range and drops it, so the
        # Conv's own output has no counterpart: it is measured where the activation's output is
        wanted.update(after.output[0] for after in consumers.get(main_output(node), []) if after.op_type in FOLDED)
    work.mkdir(parents=True, exist_ok=True)
    float_tapped, quant_tapped = work / "float_tapped.onnx", work / "quant_tapped.onnx"
    # in QDQ graphs what the next op sees of tensor T is DequantizeLinear(QuantizeLinear(T))
    seen_as = dequantized_names(quant_model)
    quant_names = {seen_as.get(name, name): name for name in wanted}
    exposed = expose(quant_model, quant_tapped, set(quant_names))
    matched = expose(float_model, float_tapped, wanted) & {quant_names[name] for name in exposed}
    _check(stop)
    stats = _compare_streamed(
        float_tapped, quant_tapped, quant_names, matched, dataset, work, threads, memory_bytes, stop
    )

    def error(name: str) -> float | None:
        if name in inputs:
            return 0.0
        if name not in stats:
            after = consumers.get(name, [])
            if len(after) == 1 and after[0].op_type in FOLDED and after[0].output[0] in stats:
                return error(after[0].output[0])
            return None
        return stats[name].error()

    def node_error(node: onnx.NodeProto) -> float | None:
        if not any(subgraphs(node)):
            return error(main_output(node))
        errors = [error(name) for name in node.output if name]
        return None if any(e is None for e in errors) else max(errors, default=0.0)

    measured = [(name, node, node.op_type) for name, node in nodes.items()]
    measured += [(name, container, op_type) for name, (container, op_type) in in_bodies.items()]
    ranked = []
    for name, node, op_type in measured:
        err = node_error(node)
        upstream = [error(i) for i in reads_of(node) if i not in initializers]
        worst_in = max((e for e in upstream if e is not None), default=0.0)
        if err is None:
            ranked.append(NodeSensitivity(node=name, op_type=op_type, error=-1.0, local_error=-1.0))
        else:
            ranked.append(NodeSensitivity(node=name, op_type=op_type, error=err, local_error=max(err - worst_in, 0.0)))
    ranked.sort(key=lambda s: (s.local_error, s.error), reverse=True)
    return ranked


@dataclass
class _CosineStats:
    """1 - cosine of a tensor over all batches, accumulated: the same figure as over the concatenated tensor."""

    dot: float = 0.0
    ref_norm2: float = 0.0
    out_norm2: float = 0.0
    close: bool = True
    comparable: bool = True

    def add(self, ref: np.ndarray, out: np.ndarray) -> None:
        if ref.shape != out.shape:
            self.comparable = False
            return
        if ref.dtype.kind != "f":
            return  # integer tensors carry no quantization error
        a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
        self.dot += float(np.dot(a, b))
        self.ref_norm2 += float(np.dot(a, a))
        self.out_norm2 += float(np.dot(b, b))
        self.close = self.close and bool(np.allclose(a, b))

    def error(self) -> float | None:
        if not self.comparable:
            return None
        norm = np.sqrt(self.ref_norm2) * np.sqrt(self.out_norm2)
        if norm == 0.0:
            return 0.0 if self.close else 1.0
        return max(0.0, 1.0 - self.dot / norm)


def _compare_streamed(
    float_tapped: Path,
    quant_tapped: Path,
    quant_names: dict[str, str],
    matched: set[str],
    dataset: Dataset,
    work: Path,
    threads: int,
    memory_bytes: int,
    stop: Callable[[], bool] | None = None,
) -> dict[str, _CosineStats]:
    """Per matched tensor, the cosine statistics of the quantized model's value against the float model's."""
    if not matched or dataset.n_samples == 0:
        return {}
    per_sample = activation_bytes_per_sample(float_tapped, dataset.take(1).first_feed(1), 1, work / "probe")
    # both models' tapped tensors and their float64 copies for one batch
    batch = max(1, min(MAX_BATCH, memory_bytes // (HELD_COPIES * per_sample)))
    _check(stop)
    float_session = lean_session(float_tapped, threads)
    _check(stop)
    quant_session = lean_session(quant_tapped, threads)
    by_quant_name = {quant: name for quant, name in quant_names.items() if name in matched}
    float_wanted = sorted(matched)
    quant_wanted = sorted(by_quant_name)
    stats = {name: _CosineStats() for name in matched}
    for feed, _ in dataset.batches(batch):
        _check(stop)
        ref = dict(zip(float_wanted, _run(float_session, float_wanted, feed), strict=True))
        out = _run(quant_session, quant_wanted, feed)
        for quant, value in zip(quant_wanted, out, strict=True):
            name = by_quant_name[quant]
            stats[name].add(np.asarray(ref[name]), np.asarray(value))
        del ref, out
    return stats


def _run(session: ort.InferenceSession, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(names, feed)
    except Exception as exc:
        raise InvalidModelError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0][:500]}") from exc
