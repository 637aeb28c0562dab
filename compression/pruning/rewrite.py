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
    """Positions left on the layout's axis (a segment whose group was cut into pieces counts each piece)."""
    total = 0
    for seg in layout.segments:
        gone = 0 if seg.group is None else sum(len(removal.get(leaf, ())) for leaf, _ in analysis.leaves(seg.group))
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
    graphs = [model.graph, *model.graph.subgraphs()]
    taken = taken_names(model.graph)
    for graph in graphs:  # one book for the whole model: a body sees every outer name
        _TAKEN[id(graph)] = taken
    try:
        _apply(model, analysis, removal, edits)
    finally:
        for graph in graphs:
            _TAKEN.pop(id(graph), None)
    for graph in graphs:
        _forget_shapes(graph)


def _apply(model: ir.Model, analysis: Analysis, removal: Removal, edits: dict) -> None:
    _slice_initializers(model.graph, edits)
    for fixup in analysis.fixups:
        node = fixup.node
        if fixup.kind == "depthwise_group":
            node.attributes["group"] = ir.AttrInt64("group", new_size(fixup.detail["layout"], analysis, removal))
        elif fixup.kind == "rnn_hidden":
            hidden = new_size(fixup.detail["layout"], analysis, removal)
            node.attributes["hidden_size"] = ir.AttrInt64("hidden_size", hidden)
            for index in fixup.detail["drop_inputs"]:  # zero initial states: ONNX's default is zero too
                node.replace_input_with(index, None)
        elif fixup.kind == "split":
            sizes = [new_size(analysis.layouts[out], analysis, removal) for out in node.outputs]
            _set_int_input(node.graph or model.graph, node, 1, sizes, "split", drop_attrs=("num_outputs",))
        elif fixup.kind == "slice":
            before = new_size(fixup.detail["before"], analysis, removal)
            inside = new_size(fixup.detail["inside"], analysis, removal)
            pos = fixup.detail["pos"]
            for index, value in ((1, before), (2, before + inside)):
                bounds = node.inputs[index].const_value.numpy().copy()
                bounds[pos] = value
                _set_int_input(node.graph or model.graph, node, index, bounds.tolist(), None)
        elif fixup.kind == "scalar_input":  # a uniform fill read elementwise: its value as a scalar
            value = fixup.detail["value"]
            stem = f"{node.name or node.op_type}_{fixup.detail['index']}_scalar"
            node.replace_input_with(fixup.detail["index"], _new_initializer(node.graph or model.graph, stem, value))
        elif fixup.kind == "freeze":  # a float computed from the channel count keeps the unpruned count
            value, layout = fixup.detail["value"], fixup.detail["layout"]
            if new_size(layout, analysis, removal) != layout.size:
                frozen = _new_initializer(value.graph or model.graph, f"{value.name}_unpruned", fixup.detail["array"])
                value.replace_all_uses_with(frozen)
        elif fixup.kind == "expand":
            layout = fixup.detail["layout"]
            if new_size(layout, analysis, removal) != layout.size:
                _patch_shape_entry(model, node, fixup.detail["index"], 1)
        elif fixup.kind == "reshape":
            layout, out_layout = fixup.detail["layout"], fixup.detail["out_layout"]
            if new_size(layout, analysis, removal) != layout.size:
                _patch_shape_entry(model, node, fixup.detail["index"], new_size(out_layout, analysis, removal))


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
            copy = _new_initializer(value.graph or graph, f"{value.name}_pruned{number}", sliced)
            for node, index in uses:
                node.replace_input_with(index, copy)


def taken_names(graph: ir.Graph) -> set[str]:
    """Every value and node name of the graph and of the bodies nested in it (If/Loop/Scan): a new name
    must not collide with one a body reads from the outer scope or defines."""
    names = {v.name for v in [*graph.inputs, *graph.initializers.values()] if v.name}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        names.update(v.name for v in node.outputs if v.name)
        if node.name:
            names.add(node.name)
    for sub in graph.subgraphs():
        names.update(v.name for v in [*sub.inputs, *sub.initializers.values()] if v.name)
    return names


_TAKEN: dict[int, set[str]] = {}  # id(graph) -> names, while a rewrite runs


def set_input_initializer(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, stem: str) -> ir.Value:
    """Point input `index` of `node` at a new initializer (a fresh name from `stem`) holding `array`.

    The previous input is left as it was: an initializer another node (or a subgraph) reads is never edited.
    """
    value = _new_initializer(graph, stem, array)
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    return value


def unique_name(graph: ir.Graph, base: str) -> str:
    taken = _TAKEN.get(id(graph))
    if taken is None:
        taken = taken_names(graph)
    name, n = base, 0
    while name in taken or name in graph.initializers:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    name = unique_name(graph, name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    value.const_value = ir.tensor(array, name=name)
    graph.register_initializer(value)
    return value


def _set_int_input(
    graph: ir.Graph, node: ir.Node, index: int, ints: list[int], attr: str | None, drop_attrs: tuple[str, ...] = ()
) -> None:
    """Write an int list as a fresh initializer input (shared shape constants stay untouched) or attribute.

    The input keeps the integer type it had (Slice wants starts/ends/axes/steps of one type)."""
    if attr is not None and attr in node.attributes:
        node.attributes[attr] = ir.AttrInt64s(attr, ints)
        return
    for name in drop_attrs:
        node.attributes.pop(name, None)
    current = node.inputs[index] if len(node.inputs) > index else None
    dtype = current.const_value.numpy().dtype if current is not None and current.const_value is not None else np.int64
    value = _new_initializer(graph, f"{node.name or node.op_type}_{index}_pruned", np.asarray(ints, dtype=dtype))
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


INT64_MAX = np.iinfo(np.int64).max


def _patch_shape_entry(model: ir.Model, node: ir.Node, index: int, size: int) -> None:
    """Set entry `index` of a Reshape's target: a fresh constant when the target is constant, else
    Concat(target[:index], [size], target[index + 1:]) in front of the Reshape (the other entries may be
    computed from the input's shape at run time)."""
    graph, target = node.graph or model.graph, node.inputs[1]
    if target.const_value is not None and not target.is_graph_input():
        entries = target.const_value.numpy().astype(np.int64).reshape(-1).copy()
        entries[index] = size
        _set_int_input(graph, node, 1, entries.tolist(), None)
        return
    stem = unique_name(graph, f"{node.name or node.op_type}_target")

    def const(suffix: str, values: list[int]) -> ir.Value:
        return _new_initializer(graph, f"{stem}_{suffix}", np.asarray(values, dtype=np.int64))

    if model.opset_imports.get("", 1) >= 10:
        head_inputs = [target, const("zero", [0]), const("index", [index])]
        head = ir.Node("", "Slice", head_inputs, name=unique_name(graph, f"{stem}_head"))
        tail_inputs = [target, const("next", [index + 1]), const("end", [int(INT64_MAX)])]
        tail = ir.Node("", "Slice", tail_inputs, name=unique_name(graph, f"{stem}_tail"))
    else:
        head = ir.Node("", "Slice", [target], _slice_attrs(0, index), name=unique_name(graph, f"{stem}_head"))
        tail_attrs = _slice_attrs(index + 1, int(INT64_MAX))
        tail = ir.Node("", "Slice", [target], tail_attrs, name=unique_name(graph, f"{stem}_tail"))
    inputs = [head.outputs[0], const("size", [size]), tail.outputs[0]]
    concat = ir.Node("", "Concat", inputs, [ir.AttrInt64("axis", 0)], name=unique_name(graph, f"{stem}_patched"))
    for new in (head, tail, concat):
        new.outputs[0].name = new.name
    graph.insert_before(node, [head, tail, concat])
    node.replace_input_with(1, concat.outputs[0])


def _slice_attrs(start: int, end: int) -> list[ir.Attr]:
    return [ir.AttrInt64s("starts", [start]), ir.AttrInt64s("ends", [end]), ir.AttrInt64s("axes", [0])]


def _forget_shapes(graph: ir.Graph) -> None:
    """Intermediate shapes are stale after slicing; onnxruntime infers them again."""
    for node in graph:
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None
