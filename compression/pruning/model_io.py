"""Load an ONNX model into onnx_ir in the shape the pruning analysis expects, and save it back."""

from __future__ import annotations

import contextlib
from pathlib import Path

import onnx_ir as ir
from onnx_ir.passes import common

from compression.errors import InvalidModelError


def load_for_pruning(path: Path) -> ir.Model:
    """Constants lifted to initializers (some exporters keep weights in Constant nodes) and shapes inferred.

    Shapes give the analysis the ranks and channel counts it needs; a model whose shapes cannot be
    inferred is still analysed, with every group that needs a missing shape left unpruned.
    """
    try:
        model = ir.load(str(path))
    except Exception as exc:
        raise InvalidModelError(f"cannot read the ONNX model: {str(exc).splitlines()[0][:300]}") from exc
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    with contextlib.suppress(Exception):  # best effort: the analysis copes with unknown shapes
        common.ShapeInferencePass()(model)
    return model


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
