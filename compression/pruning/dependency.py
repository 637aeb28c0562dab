"""Channel dependency groups of an ONNX graph, the way DepGraph builds them for PyTorch modules.

Every Conv/Gemm/MatMul with a constant weight starts a group: its output channels. The analysis walks
the graph in topological order and tracks, for each tensor, which axis carries channels and which
group owns each range of it (a `Layout`). Ops that pass channels through carry the layout on; joins
(Add/Mul/...) merge the groups they meet; Concat lays groups side by side; Split/Slice cut them back;
Flatten/Reshape stretch a channel into a block of positions. Every constant that must shrink with a
group is recorded as a `Slot`. Whatever the walk does not understand marks the groups it touches as
unprunable, with the reason, so the rewrite never has to guess.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir

from compression.pruning.axis_ops import AxisOps
from compression.pruning.fills import uniform_fill
from compression.pruning.layout import Analysis, Fixup, Group, Layout, Segment, Slot, SlotRole, leaves
from compression.pruning.model_io import is_constant, static_dims, weight_array
from compression.pruning.recurrent_ops import RecurrentOps
from compression.pruning.reshape_ops import ReshapeOps
from compression.pruning.shapes import SHAPE_OPS, symbolic_dims

UNARY_PASSTHROUGH = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Erf", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
        "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Identity", "Abs", "Neg", "Exp", "Log", "Sqrt",
        "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Cast", "Clip", "Dropout", "Not",
        "IsNaN", "IsInf", "Shrink",
    }
)  # fmt: skip
BROADCAST_JOINS = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Greater", "Less",
     "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift"}
)  # fmt: skip
SPATIAL_PASSTHROUGH = frozenset(
    {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Resize", "Upsample"}
)
REDUCTIONS = frozenset(
    {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
)  # fmt: skip


class _Walker(AxisOps, ReshapeOps, RecurrentOps):
    def __init__(self, model: ir.Model, exclude: set[str]) -> None:
        self.model = model
        self.exclude = exclude
        self.groups: list[Group] = []
        self.parent: list[int] = []
        self.layouts: dict[ir.Value, Layout] = {}
        self.fixups: list[Fixup] = []
        self.shape_values: dict[ir.Value, list] = {}
        self.shape_reads: list[tuple[ir.Value, Layout, ir.Node]] = []
        self.accepted_reshapes: set[ir.Node] = set()
        self.ranks: dict[ir.Value, int] = {}
        self.scalarized: set[tuple[ir.Node, int]] = set()
        self.frozen: dict[ir.Value, np.ndarray] = {}

    # --- groups -----------------------------------------------------------------------------------------
    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def new_group(self, size: int, producer: ir.Node) -> int:
        gid = len(self.groups)
        self.groups.append(Group(id=gid, size=size, producers=[producer.name or producer.op_type]))
        self.parent.append(gid)
        return gid

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        ga, gb = self.groups[ra], self.groups[rb]
        self.parent[rb] = ra
        ga.producers += gb.producers
        ga.slots += gb.slots
        ga.tensors += gb.tensors
        ga.reasons += gb.reasons
        if gb.tile_of is not None:
            if ga.tile_of is not None and (self.find(ga.tile_of[0]), ga.tile_of[1]) != (
                self.find(gb.tile_of[0]),
                gb.tile_of[1],
            ):
                ga.reasons.append("joins tensors split into attention heads differently")
            ga.tile_of = ga.tile_of or gb.tile_of
        return ra

    def taint(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for seg in layout.segments:
            if seg.group is not None:
                for leaf, _ in leaves(self.groups, self.find, seg.group):
                    reasons = self.groups[leaf].reasons
                    if reason not in reasons:
                        reasons.append(reason)

    # --- cutting groups (Split/Slice boundaries inside a group) ------------------------------------------
    def refine(self, gid: int, k: int) -> bool:
        """Cut a group at channel `k` into two groups; every layout, slot and tensor follows. False if it cannot."""
        pieces = leaves(self.groups, self.find, gid)
        start = 0
        for leaf, count in pieces:  # the live group holding channel k
            if start < k < start + count:
                gid, k = leaf, k - start
                break
            if k == start or k == start + count:
                return True  # already a boundary
            start += count
        else:
            return False
        group = self.groups[gid]
        if group.tile_of is not None or any(
            g.tile_of is not None and self.find(g.tile_of[0]) == gid for g in self.groups
        ):
            return False  # attention head-dim groups are not cut
        ids = []
        for begin, size in ((0, k), (k, group.size - k)):
            piece = Group(id=len(self.groups), size=size, reasons=list(group.reasons))
            piece.producers = [_ranged(p, begin, size) for p in group.producers]
            piece.slots = [Slot(s.node, s.input_index, s.axis, s.offset + begin * s.block, s.block, s.role)
                           for s in group.slots]  # fmt: skip
            piece.tensors = [(v, axis, offset + begin * block, block) for v, axis, offset, block in group.tensors]
            self.groups.append(piece)
            self.parent.append(piece.id)
            ids.append((piece.id, size))
        group.pieces, group.slots, group.tensors = ids, [], []
        for value, layout in self.layouts.items():
            self.layouts[value] = self.expand(layout)
        return True

    def expand(self, layout: Layout) -> Layout:
        """The layout with every segment of a cut group replaced by its pieces."""
        if all(s.group is None or self.groups[self.find(s.group)].pieces is None for s in layout.segments):
            return layout
        segments = []
        for seg in layout.segments:
            if seg.group is None:
                segments.append(seg)
                continue
            segments += [Segment(leaf, count, seg.block) for leaf, count in leaves(self.groups, self.find, seg.group)]
        return Layout(layout.axis, tuple(segments))

    def cut_groups(self, layout: Layout, sizes: list[int]) -> list[Layout] | None:
        """`cut`, first cutting the groups a boundary falls inside (each piece pruned on its own)."""
        boundaries, total = [], 0
        for size in sizes[:-1]:
            total += size
            boundaries.append(total)
        for boundary in boundaries:
            for index, (seg, offset) in enumerate(layout.placed()):
                if not offset < boundary < offset + seg.width:
                    continue
                if (boundary - offset) % seg.block:
                    return None
                k = (boundary - offset) // seg.block
                if seg.group is None:
                    parts = (Segment(None, k, seg.block), Segment(None, seg.count - k, seg.block))
                    layout = Layout(layout.axis, layout.segments[:index] + parts + layout.segments[index + 1 :])
                elif not self.refine(seg.group, k):
                    return None
                layout = self.expand(layout)
                break
        return self.cut(layout, sizes)

    def slot(self, node: ir.Node, index: int, axis: int, layout: Layout, role: SlotRole) -> None:
        """Record that input `index` of `node` shrinks along `axis` with every group of `layout`."""
        layout = self.expand(layout)
        for seg, offset in layout.placed():
            if seg.group is None:
                continue
            group = self.groups[self.find(seg.group)]
            group.slots.append(Slot(node, index, axis, offset, seg.block, role))
            if node.name in self.exclude:
                self.taint(Layout(axis, (seg,)), f"node '{node.name}' is excluded")

    def set_layout(self, value: ir.Value, layout: Layout) -> None:
        layout = self.expand(layout)
        self.layouts[value] = layout
        for seg, offset in layout.placed():
            if seg.group is not None:
                self.groups[self.find(seg.group)].tensors.append((value, layout.axis, offset, seg.block))

    # --- helpers -----------------------------------------------------------------------------------------
    def rank(self, value: ir.Value | None) -> int | None:
        """Rank from inferred shapes, or from what the walk learnt (e.g. a Reshape's target length)."""
        dims = static_dims(value)
        if dims is None:
            return self.ranks.get(value) if value is not None else None
        return len(dims)

    def unknown(self, node: ir.Node, why: str) -> None:
        for value in node.inputs:
            if value is not None:
                self.taint(self.layouts.get(value), f"{node.op_type} '{node.name}': {why}")

    def unify(self, a: Layout, b: Layout, node: ir.Node) -> Layout | None:
        """Merge two layouts that meet elementwise: their groups become one (residual joins)."""
        a, b = self.expand(a), self.expand(b)
        if a.axis != b.axis or len(a.segments) != len(b.segments):
            return None
        segments = []
        for sa, sb in zip(a.segments, b.segments, strict=True):
            if sa.count != sb.count or sa.block != sb.block:
                return None
            if sa.group is None or sb.group is None:
                fixed = Layout(a.axis, (sa, sb))
                self.taint(fixed, f"{node.op_type} '{node.name}' joins it with channels that cannot be pruned")
                segments.append(Segment(None, sa.count, sa.block))
                continue
            segments.append(Segment(self.union(sa.group, sb.group), sa.count, sa.block))
        return Layout(a.axis, tuple(segments))

    def int_list(self, node: ir.Node, attr: str, input_index: int) -> list[int] | None:
        """An int list given as an attribute (old opsets) or a constant input (new opsets)."""
        if attr in node.attributes:
            return list(node.attributes[attr].as_ints())
        if len(node.inputs) > input_index and node.inputs[input_index] is not None:
            array = weight_array(node.inputs[input_index])
            return None if array is None else [int(v) for v in array.reshape(-1)]
        return None

    def attr_int(self, node: ir.Node, name: str, default: int) -> int:
        return node.attributes[name].as_int() if name in node.attributes else default

    # --- walk --------------------------------------------------------------------------------------------
    def run(self) -> Analysis:
        self.walk(self.model.graph)
        self.check_shape_reads()
        self.couple_tiles()
        for value, layout in list(self.layouts.items()):
            if value.is_graph_output():
                self.taint(layout, f"tensor '{value.name}' is a graph output")
            for user, _ in value.uses():
                if user.graph is not value.graph:
                    self.taint(layout, f"tensor '{value.name}' is used inside a subgraph")
        return Analysis(self.groups, self.layouts, self.fixups, self.find)

    def walk(self, graph: ir.Graph) -> None:
        """The graph's nodes in order; an If/Loop/Scan body is walked where its node stands, as a graph of its
        own: groups made and consumed inside a body prune there, what crosses its border stays intact."""
        for node in graph:
            self.visit(node)
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    self.walk(attr.as_graph())
                elif attr.type == ir.AttributeType.GRAPHS:
                    for body in attr.as_graphs():
                        self.walk(body)

    def visit(self, node: ir.Node) -> None:
        # A body reads outer tensors as plain values: their channels stay intact ("used inside a subgraph").
        outer = {v: self.layouts.pop(v) for v in node.inputs if v is not None and v.graph is not node.graph
                 and v in self.layouts}  # fmt: skip
        try:
            self.dispatch(node)
        finally:
            self.layouts.update(outer)

    def dispatch(self, node: ir.Node) -> None:
        handler = getattr(self, f"op_{node.op_type}", None)
        in_layouts = [self.layouts.get(v) for v in node.inputs if v is not None]
        if node.domain not in ("", "ai.onnx"):
            self.unknown(node, f"custom-domain op '{node.domain}' is not understood")
        elif node.op_type in SHAPE_OPS and self.eval_shape_op(node):
            return
        elif handler is not None:
            handler(node)
        elif node.op_type in UNARY_PASSTHROUGH:
            self.op_unary(node)
        elif node.op_type in BROADCAST_JOINS:
            self.op_broadcast(node)
        elif node.op_type in SPATIAL_PASSTHROUGH:
            self.op_spatial(node)
        elif node.op_type in REDUCTIONS:
            self.op_reduce(node)
        elif any(in_layouts):
            self.unknown(node, "op is not understood by the channel analysis")

    def couple_tiles(self) -> None:
        """A group tiled from a head-dim group is pruned with it: whatever blocks one blocks both."""
        for _ in range(2):
            for gid in range(len(self.groups)):
                group = self.groups[gid]
                if self.find(gid) != gid or group.tile_of is None:
                    continue
                tile = self.groups[self.find(group.tile_of[0])]
                for reason in group.reasons:
                    if reason not in tile.reasons:
                        tile.reasons.append(reason)
                for reason in tile.reasons:
                    if reason not in group.reasons:
                        group.reasons.append(reason)

    # --- producers and consumers -------------------------------------------------------------------------
    def consume(self, node: ir.Node, layout: Layout | None, weight_index: int, weight_axis: int) -> None:
        """The input channels of a weighted layer: its weight loses rows/columns with the incoming groups."""
        if layout is None:
            return
        self.slot(node, weight_index, weight_axis, layout, "weight_in")

    def produce(self, node: ir.Node, weight_index: int, weight_axis: int, out_axis: int, size: int) -> Layout:
        gid = self.new_group(size, node)
        layout = Layout(out_axis, (Segment(gid, size),))
        self.slot(node, weight_index, weight_axis, layout, "weight_out")
        return layout

    def op_Conv(self, node: ir.Node) -> None:
        self.convolution(node, transposed=False)

    def op_ConvTranspose(self, node: ir.Node) -> None:
        self.convolution(node, transposed=True)

    def convolution(self, node: ir.Node, transposed: bool) -> None:
        """Conv weight [C_out, C_in/group, k...]; ConvTranspose weight [C_in, C_out/group, k...]."""
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        layout = self.layouts.get(x)
        weight = weight_array(w)
        if weight is None or not w.is_initializer():
            self.unknown(node, "weight is not a constant initializer")
            return
        groups = self.attr_int(node, "group", 1)
        in_axis, out_axis = (0, 1) if transposed else (1, 0)
        per_group_in = weight.shape[0] // groups if transposed else weight.shape[1]
        c_out = weight.shape[1] * groups if transposed else weight.shape[0]
        if groups == 1:  # input channels may own blocks of positions (a channel shuffle interleaves them)
            if layout is not None and layout.axis != 1:
                self.taint(layout, f"{node.op_type} '{node.name}' input channels are not on axis 1")
            else:
                self.consume(node, layout, 1, in_axis)
            out = self.produce(node, 1, out_axis, 1, c_out)
        elif per_group_in == 1 and c_out == groups and layout is not None and layout.axis == 1:
            # Depthwise: channel i in, channel i out; the group count follows the channel count.
            if any(s.block != 1 for s in layout.segments):
                self.taint(layout, f"{node.op_type} '{node.name}' input channels are not on axis 1")
                return
            out = layout
            self.slot(node, 1, 0, layout, "weight_in")
            self.fixups.append(Fixup("depthwise_group", node, {"layout": layout}))
        else:
            self.unknown(node, f"grouped {node.op_type} (group={groups}) is not pruned")
            return
        if bias is not None:
            if not is_constant(bias):
                self.taint(out, f"{node.op_type} '{node.name}' bias is not constant")
                self.taint(self.layouts.get(bias), f"{node.op_type} '{node.name}' reads it as a bias")
            else:
                self.slot(node, 2, 0, out, "param")
        self.set_layout(node.outputs[0], out)

    def op_Gemm(self, node: ir.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        weight = weight_array(b)
        if self.attr_int(node, "transA", 0) or weight is None or not b.is_initializer() or weight.ndim != 2:
            self.unknown(node, "needs transA=0 and a constant 2-D weight")
            return
        trans_b = self.attr_int(node, "transB", 0)
        layout = self.layouts.get(a)
        if layout is not None and layout.axis != 1:
            self.taint(layout, f"Gemm '{node.name}' input features are not on axis 1")
        else:
            self.consume(node, layout, 1, 1 if trans_b else 0)
        n_out = weight.shape[0] if trans_b else weight.shape[1]
        out = self.produce(node, 1, 0 if trans_b else 1, 1, n_out)
        self.bias_slot(node, c, 2, out)
        self.set_layout(node.outputs[0], out)

    def bias_slot(self, node: ir.Node, c: ir.Value | None, index: int, out: Layout) -> None:
        if c is None:
            return
        dims = static_dims(c)
        if not is_constant(c) or dims is None:
            self.taint(out, f"{node.op_type} '{node.name}' bias is not constant")
            self.taint(self.layouts.get(c), f"{node.op_type} '{node.name}' reads it as a bias")
        elif dims and dims[-1] == out.size and out.size != 1:
            self.slot(node, index, len(dims) - 1, out, "param")

    def op_MatMul(self, node: ir.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        weight = weight_array(b)
        rank_a = self.rank(a)
        if weight is None and not is_constant(b) and rank_a is not None and self.rank(b) is not None:
            self.activation_matmul(node)
            return
        if weight is None or not b.is_initializer() or weight.ndim != 2 or rank_a is None:
            self.unknown(node, "needs a constant 2-D weight as second input and a known input rank")
            return
        layout = self.layouts.get(a)
        if layout is not None and layout.axis != rank_a - 1:
            self.taint(layout, f"MatMul '{node.name}' contracts a different axis than the channels")
        else:
            self.consume(node, layout, 1, 0)
        out_rank = self.rank(node.outputs[0]) or max(rank_a, 2)
        self.ranks[node.outputs[0]] = out_rank
        out = self.produce(node, 1, 1, out_rank - 1, weight.shape[1])
        self.set_layout(node.outputs[0], out)

    def activation_matmul(self, node: ir.Node) -> None:
        """MatMul of two activations (attention): a contracted channel axis couples both sides' groups
        (q and k head dims); channels on B's last axis pass through to the output (v head dims)."""
        a, b = node.inputs[0], node.inputs[1]
        rank_a, rank_b = self.rank(a), self.rank(b)
        la, lb = self.layouts.get(a), self.layouts.get(b)
        out_rank = self.rank(node.outputs[0]) or max(rank_a or 2, rank_b or 2)
        if la is not None and lb is not None and la.axis == rank_a - 1 and lb.axis == rank_b - 2:
            if self.unify(la.with_axis(0), lb.with_axis(0), node) is None:
                self.unknown(node, "contracts channel layouts that do not line up")
            return
        if la is None and lb is not None and lb.axis == rank_b - 1:
            self.ranks[node.outputs[0]] = out_rank
            self.set_layout(node.outputs[0], lb.with_axis(out_rank - 1))
            return
        if la is not None or lb is not None:
            self.unknown(node, "multiplies activations along their channel axes in a way not supported")

    # --- pass-through ops --------------------------------------------------------------------------------
    def op_unary(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0]) if node.inputs else None
        for value in node.inputs[1:]:
            if value is not None and value in self.layouts:
                self.unknown(node, "channels reach a non-data input")
                return
        if layout is None:
            return
        rank = self.rank(node.inputs[0])
        if rank is not None:
            self.ranks[node.outputs[0]] = rank
        self.set_layout(node.outputs[0], layout)
        for extra in node.outputs[1:]:
            if extra.uses() or extra.is_graph_output():
                self.taint(layout, f"{node.op_type} '{node.name}' extra output is used")

    def op_spatial(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            self.unknown(node, "channels reach a non-data input")
            return
        if layout.axis != 1:
            self.taint(layout, f"{node.op_type} '{node.name}' needs channels on axis 1")
            return
        if node.op_type == "Resize" and len(node.inputs) > 3 and node.inputs[3] is not None:
            self.taint(layout, f"Resize '{node.name}' sets explicit sizes")
            return
        self.op_unary(node)

    def op_broadcast(self, node: ir.Node) -> None:
        out_rank = self.rank(node.outputs[0])
        present = [(i, v) for i, v in enumerate(node.inputs) if v is not None]
        layouts = [(i, v, self.layouts[v]) for i, v in present if v in self.layouts]
        if not layouts:
            return
        input_ranks = [self.rank(v) for _, v in present]
        if out_rank is None and None not in input_ranks:
            out_rank = max(input_ranks)  # type: ignore[type-var]
            self.ranks[node.outputs[0]] = out_rank
        if out_rank is None:
            self.unknown(node, "output rank is unknown")
            return
        if any(layout.size > 1 for _, _, layout in layouts):
            # A single channel broadcast over many (an attention weight times features) joins nothing.
            for _, _, layout in layouts:
                if layout.size == 1:
                    self.taint(layout, f"{node.op_type} '{node.name}' broadcasts its single channel over others")
            layouts = [entry for entry in layouts if entry[2].size > 1]
        carried = {v for _, v, _ in layouts}
        merged: Layout | None = None
        for _, v, layout in layouts:
            shifted = layout.with_axis(layout.axis + out_rank - (self.rank(v) or out_rank))
            merged = shifted if merged is None else self.unify(merged, shifted, node)
            if merged is None:
                self.unknown(node, "joins tensors whose channel layouts do not line up")
                return
        assert merged is not None
        for index, value in present:
            if value in carried:
                continue
            dims = static_dims(value)
            if dims is None:
                self.unknown(node, f"input '{value.name}' has an unknown shape")
                return
            in_axis = merged.axis - (out_rank - len(dims))
            if in_axis < 0 or dims[in_axis] == 1:
                continue
            if dims[in_axis] != merged.size:
                self.unknown(node, f"input '{value.name}' does not broadcast over the channels")
                return
            if not is_constant(value) and self.scalar_fill(node, index, value, out_rank, merged):
                continue
            if not is_constant(value):
                self.unknown(node, f"joins '{value.name}', whose channels no prunable layer produces")
                return
            self.slot(node, index, in_axis, merged, "param")
        self.set_layout(node.outputs[0], merged)

    def scalar_fill(self, node: ir.Node, index: int, value: ir.Value, out_rank: int, merged: Layout) -> bool:
        """A computed tensor holding one value everywhere (zeros, ones_like) whose shape the channel-carrying
        inputs already give the output: the rewrite feeds that value as a scalar instead."""
        fill, dims = uniform_fill(value), symbolic_dims(value)
        if fill is None or dims is None or len(dims) > out_rank:
            return False
        carried = [symbolic_dims(v) for v in node.inputs if v is not None and v in self.layouts and v is not value]
        for i, dim in enumerate(dims):
            position = i + out_rank - len(dims)
            if dim == 1 or position == merged.axis:
                continue
            if not any(d is not None and position - (out_rank - len(d)) >= 0 and d[position - (out_rank - len(d))] == dim
                       for d in carried):  # fmt: skip
                return False
        self.fixups.append(Fixup("scalar_input", node, {"index": index, "value": fill}))
        self.scalarized.add((node, index))
        return True

    def op_BatchNormalization(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            return
        if layout.axis != 1 or not all(is_constant(v) for v in node.inputs[1:5]):
            self.unknown(node, "needs channels on axis 1 and constant statistics")
            return
        for index in range(1, 5):
            self.slot(node, index, 0, layout, "scale" if index == 1 else "param")
        self.op_unary(node)

    def op_InstanceNormalization(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            return
        if layout.axis != 1 or not all(is_constant(v) for v in node.inputs[1:3]):
            self.unknown(node, "needs channels on axis 1 and constant scale/bias")
            return
        for index in (1, 2):
            self.slot(node, index, 0, layout, "param")
        self.set_layout(node.outputs[0], layout)

    def op_LayerNormalization(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        rank = self.rank(node.inputs[0])
        if layout is None:
            return
        if rank is None:
            self.unknown(node, "input rank is unknown")
            return
        axis = self.attr_int(node, "axis", -1) % rank
        if layout.axis >= axis:
            self.taint(layout, f"LayerNormalization '{node.name}' normalizes over the channel axis")
            return
        self.op_unary(node)

    def op_Softmax(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        rank = self.rank(node.inputs[0])
        if layout is None:
            return
        if rank is None or self.attr_int(node, "axis", -1) % rank == layout.axis:
            self.taint(layout, f"{node.op_type} '{node.name}' normalizes over the channel axis")
            return
        self.op_unary(node)

    op_LogSoftmax = op_Softmax


def _ranged(producer: str, begin: int, size: int) -> str:
    """A producer name with the channel range a piece holds, relative to the producer's own channels."""
    match = re.fullmatch(r"(.*)\[(\d+):(\d+)\]", producer)
    base, offset = (match.group(1), int(match.group(2))) if match else (producer, 0)
    return f"{base}[{offset + begin}:{offset + begin + size}]"


def analyze(model: ir.Model, exclude: set[str] | None = None) -> Analysis:
    """Channel groups of the model's main graph; groups touched by anything not understood carry reasons."""
    return _Walker(model, exclude or set()).run()
