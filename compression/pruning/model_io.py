"""Load an ONNX model into onnx_ir in the shape the pruning analysis expects, and save it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from compression.errors import InvalidModelError
from compression.pruning.shape_inference import Feed, infer_shapes

DECLARED_SHAPES = "pruning.declared_shapes"  # model.meta keys set by load_for_pruning
SHAPE_REPORT = "pruning.shape_report"


def load_for_pruning(path: Path, feed: Feed | None = None, infer: bool = True) -> ir.Model:
    """Constants lifted to initializers (some exporters keep weights in Constant nodes) and shapes inferred.

    Shapes give the analysis the ranks and channel counts it needs (onnx, symbolic, then ranks from one
    run on `feed`); a model whose shapes cannot be inferred is still analysed, with every group that needs
    a missing shape left unpruned. The declared shapes are kept in `model.meta[DECLARED_SHAPES]` for
    `restore_declared_shapes`, the inference report in `model.meta[SHAPE_REPORT]`.
    """
    try:
        model = ir.load(str(path))
    except Exception as exc:
        raise InvalidModelError(f"cannot read the ONNX model: {str(exc).splitlines()[0][:300]}") from exc
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    fold_constant_reshapes(model)
    if infer:
        declared, report = infer_shapes(model, feed)
        model.meta[DECLARED_SHAPES] = declared
        model.meta[SHAPE_REPORT] = report
    return model


def restore_declared_shapes(model: ir.Model) -> None:
    """Put back the shapes the model declared before inference (call before rewriting)."""
    declared = model.meta.get(DECLARED_SHAPES)
    if declared is not None:
        declared.restore()


_FOLDABLE = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Identity", "Cast"})


def fold_constant_reshapes(model: ir.Model) -> int:
    """Replace shape-only ops on constants (e.g. a bias reshaped to [1,C,1,1]) by the resulting initializer.

    Exporters (Paddle, some TF converters) emit these; without folding, the bias looks computed and
    the channel group it belongs to could not be pruned.
    """
    return sum(_fold_in(graph) for graph in [model.graph, *model.graph.subgraphs()])


def _fold_in(graph: ir.Graph) -> int:
    folded = 0
    for node in list(graph):
        if node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        arrays = [weight_array(v) for v in node.inputs if v is not None]
        if not arrays or any(a is None for a in arrays) or not node.inputs[0].is_initializer():
            continue
        data = arrays[0]
        out = node.outputs[0]
        if data.ndim == 0:
            continue  # a scalar never carries channels; a known scalar shape can upset If/Loop body checks
        if node.op_type == "Reshape":
            if "allowzero" in node.attributes and node.attributes["allowzero"].as_int():
                continue
            target = [int(d) if d != 0 else data.shape[i] for i, d in enumerate(arrays[1])]
            result = data.reshape(target)
        elif node.op_type in ("Unsqueeze", "Squeeze"):
            axes = list(node.attributes["axes"].as_ints()) if "axes" in node.attributes else None
            if axes is None and len(arrays) > 1:
                axes = [int(a) for a in arrays[1]]
            if node.op_type == "Unsqueeze":
                result = data
                for axis in sorted(a % (data.ndim + len(axes)) for a in axes):
                    result = np.expand_dims(result, axis)
            else:
                result = np.squeeze(data, axis=None if axes is None else tuple(axes))
        elif node.op_type == "Cast":
            result = data.astype(ir.DataType(node.attributes["to"].as_int()).numpy())
        else:
            result = data
        value = ir.Value(
            name=out.name, shape=ir.Shape(result.shape), type=ir.TensorType(ir.DataType.from_numpy(result.dtype))
        )
        value.const_value = ir.tensor(np.ascontiguousarray(result), name=out.name)
        out.name = None
        graph.register_initializer(value)
        out.replace_all_uses_with(value, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        folded += 1
    return folded


def save_model(model: ir.Model, path: Path) -> None:
    """Save with a topological order restored and unused nodes/initializers dropped."""
    common.RemoveUnusedNodesPass()(model)
    common.TopologicalSortPass()(model)
    ir.save(model, str(path))


def weight_array(value: ir.Value | None):  # noqa: ANN201  (numpy array or None)
    """The constant array behind a node input, or None when it is computed or fed at run time."""
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and not value.is_graph_input()


def static_dims(value: ir.Value | None) -> list[int | None] | None:
    """Dims of a value (None per unknown dim), or None when even the rank is unknown."""
    if value is None:
        return None
    if value.const_value is not None:
        return [int(d) for d in value.const_value.shape]
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]
