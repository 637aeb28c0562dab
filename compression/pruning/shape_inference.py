"""Shapes for the channel analysis: onnx inference, then onnxruntime's symbolic inference, then one run.

The analysis needs the rank of every tensor it follows (and channel counts where tensors meet). Exporters
with dynamic heights, widths or lengths leave many intermediate shapes unknown to `onnx.shape_inference`;
onnxruntime's symbolic inference (`onnxruntime.tools.symbolic_shape_infer`) carries symbolic dims through
Shape arithmetic and fills most of them; whatever is still unknown gets its rank from one onnxruntime run
on a sample input with those tensors exposed as outputs.

Shapes are set on the values of the main graph and of every If/Loop/Scan body (the run reaches the main
graph only), for the analysis: `DeclaredShapes.restore` puts the model's own declarations back before it
is saved, so an output never carries a shape the exporter did not declare (onnxruntime re-checks
declared shapes inside If/Loop bodies against what it infers).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

Feed = dict[str, np.ndarray]


@dataclass
class ShapeReport:
    """How many tensor shapes each source improved; `unknown` main-graph tensors are still without a rank."""

    onnx: int = 0
    symbolic: int = 0
    run: int = 0
    unknown: int = 0
    unknown_in_bodies: int = 0  # tensors of If/Loop/Scan bodies (the rank run reaches the main graph only)
    errors: list[str] = field(default_factory=list)

    def as_metrics(self) -> dict[str, object]:
        return {"onnx": self.onnx, "symbolic": self.symbolic, "run": self.run, "unknown": self.unknown,
                "unknown_in_bodies": self.unknown_in_bodies, "errors": self.errors}  # fmt: skip


@dataclass
class DeclaredShapes:
    """The shapes and types a model declared before inference, to put back before saving."""

    shapes: dict[ir.Value, tuple[ir.Shape | None, ir.TypeProtocol | None]]

    def restore(self) -> None:
        for value, (shape, kind) in self.shapes.items():
            if not value.is_initializer():
                value.shape, value.type = shape, kind


def _tensor_values(graph: ir.Graph) -> list[ir.Value]:
    return [out for node in graph for out in node.outputs if out.name]


def _known(shape: ir.Shape | None) -> int:
    """How much a shape says: -1 without a rank, else the number of fixed or named dims."""
    if shape is None:
        return -1
    return sum(1 for d in shape if isinstance(d, int) or (isinstance(d, ir.SymbolicDim) and d.value))


def _shape_of(type_proto: onnx.TypeProto) -> ir.Shape | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in type_proto.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return ir.Shape(dims)


Inferred = dict[str, tuple[ir.Shape | None, ir.DataType | None]]


def _inferred(graph: onnx.GraphProto) -> Inferred:
    out: Inferred = {}
    for info in [*graph.value_info, *graph.output]:
        elem = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0
        out[info.name] = (_shape_of(info.type), ir.DataType(elem) if elem else None)
    return out


def _graph_pairs(graph: ir.Graph, proto: onnx.GraphProto) -> Iterator[tuple[ir.Graph, onnx.GraphProto]]:
    """The graph and its If/Loop/Scan bodies, each with the same graph in a proto of the model (same order)."""
    yield graph, proto
    nodes = list(graph)
    if len(nodes) != len(proto.node):
        return
    for node, proto_node in zip(nodes, proto.node, strict=True):
        if node.op_type != proto_node.op_type:
            return
        proto_attrs = {a.name: a for a in proto_node.attribute}
        for name, attr in node.attributes.items():
            if name not in proto_attrs:
                continue
            if attr.type == ir.AttributeType.GRAPH:
                yield from _graph_pairs(attr.as_graph(), proto_attrs[name].g)
            elif attr.type == ir.AttributeType.GRAPHS:
                for body, body_proto in zip(attr.as_graphs(), proto_attrs[name].graphs, strict=False):
                    yield from _graph_pairs(body, body_proto)


def _apply_all(graph: ir.Graph, proto: onnx.ModelProto) -> int:
    return sum(_apply(_graph_values(g), _inferred(p)) for g, p in _graph_pairs(graph, proto.graph))


def _graph_values(graph: ir.Graph) -> list[ir.Value]:
    return list(dict.fromkeys([*_tensor_values(graph), *graph.outputs]))


def _apply(values: list[ir.Value], inferred: Inferred) -> int:
    """Set each value's shape where the inferred one says more (and its type if it had none); returns how
    many shapes improved."""
    improved = 0
    for value in values:
        shape, dtype = inferred.get(value.name or "", (None, None))
        if value.type is None and dtype is not None:
            value.type = ir.TensorType(dtype)
        if shape is None or _known(shape) <= _known(value.shape):
            continue
        if value.shape is not None and value.shape.rank() != shape.rank():
            continue  # a contradiction: keep what the graph says
        if value.shape is not None:  # keep fixed dims the value already had
            shape = ir.Shape(
                [old if isinstance(old, int) else new for old, new in zip(value.shape, shape, strict=True)]
            )
        value.shape = shape
        improved += 1
    return improved


def _onnx_inference(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)


def _symbolic_module() -> types.ModuleType:
    """onnxruntime's symbolic_shape_infer, loaded from its file with a cheap `sympy.simplify`.

    Importing it as `onnxruntime.tools.symbolic_shape_infer` runs `onnxruntime/tools/__init__.py`, which
    imports torch (15 s on 2 cores). Its Resize/Slice rules call `sympy.simplify` on ever-growing size
    expressions (58 s of 70 on a 12 MB YOLO detector); sympy's automatic evaluation keeps the expressions
    correct without it, only less canonical. The patch lives in this private copy of the module.
    """
    global _SYMBOLIC
    if _SYMBOLIC is None:
        import onnxruntime
        import sympy

        path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
        spec = importlib.util.spec_from_file_location("_pruning_symbolic_shape_infer", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fast = types.ModuleType("sympy")
        fast.__dict__.update(sympy.__dict__)
        fast.simplify = lambda expr, *args, **kwargs: expr  # type: ignore[attr-defined]
        module.sympy = fast  # type: ignore[attr-defined]
        _SYMBOLIC = module
    return _SYMBOLIC


_SYMBOLIC: types.ModuleType | None = None


def _symbolic_inference(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    inference = _symbolic_module().SymbolicShapeInference
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return inference.infer_shapes(proto, auto_merge=True, guess_output_rank=True, verbose=0)


def _run_ranks(proto: onnx.ModelProto, names: list[str], feed: Feed) -> dict[str, int]:
    """Ranks of the named tensors from one onnxruntime run on `feed`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranks.onnx"
        onnx.save(probe, str(path))
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        results = session.run(names, feed)
    return {name: np.asarray(r).ndim for name, r in zip(names, results, strict=True) if isinstance(r, np.ndarray)}


def infer_shapes(model: ir.Model, feed: Feed | None) -> tuple[DeclaredShapes, ShapeReport]:
    """Fill in shapes: every graph's from onnx then symbolic inference, the main graph's ranks from one run.

    Without a feed the run uses one drawn from the declared input types (`sample_feed`), best effort.
    """
    graph = model.graph
    values = _graph_values(graph)
    everything = [v for g in [graph, *graph.subgraphs()] for v in _graph_values(g)]
    declared = DeclaredShapes({v: (v.shape, v.type) for v in everything})
    report = ShapeReport()
    proto = ir.to_proto(model)
    inferred_proto = proto
    try:
        inferred_proto = _onnx_inference(proto)
        report.onnx = _apply_all(graph, inferred_proto)
    except Exception as exc:  # noqa: BLE001  (best effort: the next source may still work)
        report.errors.append(f"onnx shape inference: {str(exc).splitlines()[0][:200]}")
    if any(v.shape is None and _is_tensor(v) for v in everything):  # symbolic inference costs seconds: only for gaps
        try:
            symbolic = _symbolic_inference(inferred_proto)
            if symbolic is None:
                report.errors.append("symbolic shape inference gave up")
            else:
                report.symbolic = _apply_all(graph, symbolic)
        except Exception as exc:  # noqa: BLE001
            first = (str(exc).splitlines() or [""])[0][:200]
            report.errors.append(f"symbolic shape inference: {type(exc).__name__} {first}".strip())
    missing = [v for v in values if v.shape is None and _is_tensor(v)]
    if missing:
        ranks = _ranks_from_a_run(proto, [v.name for v in missing if v.name], graph.inputs, feed, report)
        for value in missing:
            rank = ranks.get(value.name or "")
            if rank is not None:
                value.shape = ir.Shape([None] * rank)
                report.run += 1
    report.unknown = sum(1 for v in values if v.shape is None and _is_tensor(v))
    report.unknown_in_bodies = sum(1 for v in everything if v.shape is None and _is_tensor(v)) - report.unknown
    return declared, report


def _ranks_from_a_run(
    proto: onnx.ModelProto, names: list[str], inputs: list[ir.Value], feed: Feed | None, report: ShapeReport
) -> dict[str, int]:
    """Ranks from a run on `feed`, else on feeds drawn from the input types (symbolic dims 64, then 256)."""
    errors = []
    for guess in (None,) if feed is not None else SAMPLE_DIM_GUESSES:
        try:
            return _run_ranks(proto, names, feed if guess is None else sample_feed(inputs, guess))
        except Exception as exc:  # noqa: BLE001  (best effort: ranks stay unknown)
            errors.append((str(exc).splitlines() or [""])[0][:200])
    report.errors.append(f"sample run: {errors[-1]}")
    return {}


SAMPLE_DIM_GUESSES = (64, 256)


def _is_tensor(value: ir.Value) -> bool:
    return value.type is None or isinstance(value.type, ir.TensorType)


def sample_feed(inputs: list[ir.Value], guess: int) -> Feed:
    """A feed drawn from the declared input types: symbolic dims become 1 (first axis) or `guess`."""
    rng = np.random.default_rng(0)
    feed: Feed = {}
    for value in inputs:
        if value.type is None or not isinstance(value.type, ir.TensorType) or value.shape is None:
            raise ValueError(f"input '{value.name}' has no tensor type and shape")
        dims = [
            d if isinstance(d, int) and d >= 0 else (1 if axis == 0 else guess) for axis, d in enumerate(value.shape)
        ]
        dtype = value.type.dtype.numpy()
        if np.issubdtype(dtype, np.floating):
            feed[value.name or ""] = rng.normal(0, 1, dims).astype(dtype)
        else:
            feed[value.name or ""] = np.zeros(dims, dtype=dtype)
    return feed
