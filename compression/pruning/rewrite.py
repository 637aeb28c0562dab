"""Physically remove channels: slice every recorded constant, then fix shape-carrying inputs and attributes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from compression.pruning.layout import Analysis, Layout

Removal = dict[int, np.ndarray]  # group root id -> sorted channel indices to remove


def positions(removed: np.ndarray, offset: int, block: int) -> np.ndarray:
    """Positions on an axis covered by the removed channels of a segment starting at `offset`."""
    return (offset + removed[:, None] * block + np.arange(block)[None, :]).reshape(-1)


def new_size(layout: Layout, analysis: Analysis, removal: Removal) -> int:
    total = 0
    for seg in layout.segments:
        gone = 0 if seg.group is None else len(removal.get(analysis.find(seg.group), ()))
        total += (seg.count - gone) * seg.block
    return total


def apply_removal(model: ir.Model, analysis: Analysis, removal: Removal) -> None:
    """Slice weights, biases and normalization statistics; update Split/Slice/Reshape/group to match."""
    edits: dict[tuple[ir.Node, int], dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for root, removed in removal.items():
        if len(removed) == 0:
            continue
        for slot in analysis.groups[root].slots:
            edits[(slot.node, slot.input_index)][slot.axis].update(positions(removed, slot.offset, slot.block).tolist())
    _slice_initializers(model.graph, edits)
    for fixup in analysis.fixups:
        node = fixup.node
        if fixup.kind == "depthwise_group":
            node.attributes["group"] = ir.AttrInt64("group", new_size(fixup.detail["layout"], analysis, removal))
        elif fixup.kind == "split":
            sizes = [new_size(analysis.layouts[out], analysis, removal) for out in node.outputs]
            _set_int_input(model.graph, node, 1, sizes, "split", drop_attrs=("num_outputs",))
        elif fixup.kind == "slice":
            before = new_size(fixup.detail["before"], analysis, removal)
            inside = new_size(fixup.detail["inside"], analysis, removal)
            pos = fixup.detail["pos"]
            for index, value in ((1, before), (2, before + inside)):
                bounds = node.inputs[index].const_value.numpy().copy()
                bounds[pos] = value
                _set_int_input(model.graph, node, index, bounds.tolist(), None)
        elif fixup.kind == "reshape":
            layout = fixup.detail["layout"]
            if new_size(layout, analysis, removal) != layout.size:
                _set_int_input(model.graph, node, 1, fixup.detail["target"], None)
    _forget_shapes(model.graph)


def _slice_initializers(graph: ir.Graph, edits: dict[tuple[ir.Node, int], dict[int, set[int]]]) -> None:
    """Each edited initializer is sliced in place when every use wants the same cut, else copied per cut."""
    by_value: dict[ir.Value, list[tuple[ir.Node, int]]] = defaultdict(list)
    for node, index in edits:
        by_value[node.inputs[index]].append((node, index))
    for value in by_value:
        cuts: dict[tuple, list[tuple[ir.Node, int]]] = defaultdict(list)
        for node, index in value.uses():
            key = tuple(sorted((axis, tuple(sorted(p))) for axis, p in edits.get((node, index), {}).items()))
            cuts[key].append((node, index))
        array = value.const_value.numpy()
        for number, (key, uses) in enumerate(cuts.items()):
            if not key:
                continue
            sliced = array
            for axis, gone in key:
                sliced = np.delete(sliced, list(gone), axis=axis)
            sliced = np.ascontiguousarray(sliced)
            if len(cuts) == 1 and not value.is_graph_output():
                value.const_value = ir.tensor(sliced, name=value.name)
                value.shape = ir.Shape(sliced.shape)
                continue
            copy = _new_initializer(graph, f"{value.name}_pruned{number}", sliced)
            for node, index in uses:
                node.replace_input_with(index, copy)


def _new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    base, n = name, 0
    while name in graph.initializers:
        n += 1
        name = f"{base}_{n}"
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    value.const_value = ir.tensor(array, name=name)
    graph.register_initializer(value)
    return value


def _set_int_input(
    graph: ir.Graph, node: ir.Node, index: int, ints: list[int], attr: str | None, drop_attrs: tuple[str, ...] = ()
) -> None:
    """Write an int64 list as a fresh initializer input (shared shape constants stay untouched) or attribute."""
    if attr is not None and attr in node.attributes:
        node.attributes[attr] = ir.AttrInt64s(attr, ints)
        return
    for name in drop_attrs:
        node.attributes.pop(name, None)
    value = _new_initializer(graph, f"{node.name or node.op_type}_{index}_pruned", np.asarray(ints, dtype=np.int64))
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


def _forget_shapes(graph: ir.Graph) -> None:
    """Intermediate shapes are stale after slicing; onnxruntime infers them again."""
    for node in graph:
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None
