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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_ir as ir

from compression.pruning.model_io import is_constant, static_dims, weight_array

SlotRole = Literal["weight_out", "weight_in", "scale", "param"]

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


SHAPE_OPS = frozenset({"Cast", "Identity", "Slice", "Gather", "Concat", "Squeeze", "Unsqueeze"})
CHANNELS = ("channels",)  # the channel count inside evaluated shape arithmetic


def symbolic_dims(value: ir.Value | None) -> list | None:
    """Dims as ints, ("sym", name) for named symbolic dims, or ("dim", id, axis) placeholders."""
    if value is None:
        return None
    if value.const_value is not None:
        return [int(d) for d in value.const_value.shape]
    if value.shape is None:
        return None
    out: list = []
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int) and dim >= 0:
            out.append(dim)
        elif isinstance(dim, ir.SymbolicDim) and dim.value:
            out.append(("sym", dim.value))
        else:
            out.append(("dim", id(value), axis))
    return out


def match_channel_reshape(in_dims: list, target: list, axis: int, _: object = None) -> tuple[int, list[int]] | None:
    """How a Reshape treats the channel axis: (positions per channel after it, the constant tail), or None.

    Accepted: the dims before the channel axis are kept, the channel axis absorbs the next few (known)
    axes, and the dims after it are known constants. Anything else mixes channels with other axes.
    """
    out = [in_dims[i] if entry == 0 and i < len(in_dims) else entry for i, entry in enumerate(target)]
    if len(out) <= axis or out[:axis] != in_dims[:axis] or any(e == -1 for e in out[:axis]):
        return None
    tail = out[axis + 1 :]
    if not all(isinstance(e, int) and e > 0 for e in tail):
        return None
    for j in range(axis + 1, len(in_dims) + 1):
        merged = in_dims[axis + 1 : j]
        if not all(isinstance(d, int) for d in merged) or in_dims[j:] != tail:
            continue
        factor = int(np.prod(merged or [1]))
        head = out[axis]
        known = isinstance(in_dims[axis], int) and isinstance(head, int) and head == in_dims[axis] * factor
        if head == -1 or known or (head == CHANNELS and j == axis + 1):
            return factor, tail
    return None


@dataclass(frozen=True)
class Segment:
    """`count` channels owned by `group` (None: channels that never change), each `block` positions wide."""

    group: int | None
    count: int
    block: int = 1

    @property
    def width(self) -> int:
        return self.count * self.block


@dataclass(frozen=True)
class Layout:
    """Where the channels of a tensor are: the axis and the ordered segments along it."""

    axis: int
    segments: tuple[Segment, ...]

    @property
    def size(self) -> int:
        return sum(s.width for s in self.segments)

    def placed(self) -> list[tuple[Segment, int]]:
        """Each segment with its start position on the axis."""
        out, offset = [], 0
        for seg in self.segments:
            out.append((seg, offset))
            offset += seg.width
        return out

    def with_axis(self, axis: int) -> Layout:
        return Layout(axis, self.segments)


@dataclass(frozen=True)
class Slot:
    """A constant node input that loses `block` positions at `offset + i*block` along `axis` per removed channel i."""

    node: ir.Node
    input_index: int
    axis: int
    offset: int
    block: int
    role: SlotRole


@dataclass
class Group:
    """Channels that must be removed together, and everything that shrinks with them."""

    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    tensors: list[tuple[ir.Value, int, int, int]] = field(default_factory=list)  # value, axis, offset, block
    reasons: list[str] = field(default_factory=list)
    # Set when the channels are `repeats` copies of a smaller group's (attention heads): channel
    # k * size(tile) + d is channel d of the tile group, so both are pruned with the same indices.
    tile_of: tuple[int, int] | None = None

    @property
    def prunable(self) -> bool:
        return not self.reasons


@dataclass
class Fixup:
    """A shape-carrying attribute or input that must follow the new channel counts (Split sizes, Slice bounds...)."""

    kind: Literal["depthwise_group", "split", "slice", "reshape"]
    node: ir.Node
    detail: dict


@dataclass
class Analysis:
    groups: list[Group]
    layouts: dict[ir.Value, Layout]
    fixups: list[Fixup]
    find: Callable[[int], int]

    def roots(self) -> list[Group]:
        return [g for g in self.groups if self.find(g.id) == g.id]

    def tiles(self) -> dict[int, list[tuple[Group, int]]]:
        """Root of each head-dim group -> the groups made of `repeats` copies of it."""
        out: dict[int, list[tuple[Group, int]]] = {}
        for group in self.roots():
            if group.tile_of is not None:
                out.setdefault(self.find(group.tile_of[0]), []).append((group, group.tile_of[1]))
        return out


class _Walker:
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
                reasons = self.groups[self.find(seg.group)].reasons
                if reason not in reasons:
                    reasons.append(reason)

    def slot(self, node: ir.Node, index: int, axis: int, layout: Layout, role: SlotRole) -> None:
        """Record that input `index` of `node` shrinks along `axis` with every group of `layout`."""
        for seg, offset in layout.placed():
            if seg.group is None:
                continue
            group = self.groups[self.find(seg.group)]
            group.slots.append(Slot(node, index, axis, offset, seg.block, role))
            if node.name in self.exclude:
                self.taint(Layout(axis, (seg,)), f"node '{node.name}' is excluded")

    def set_layout(self, value: ir.Value, layout: Layout) -> None:
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
        graph = self.model.graph
        main_nodes = set(graph)
        for node in graph:
            handler = getattr(self, f"op_{node.op_type}", None)
            in_layouts = [self.layouts.get(v) for v in node.inputs if v is not None]
            if node.domain not in ("", "ai.onnx"):
                self.unknown(node, f"custom-domain op '{node.domain}' is not understood")
            elif node.op_type in SHAPE_OPS and self.eval_shape_op(node):
                continue
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
        self.check_shape_reads()
        self.couple_tiles()
        for value, layout in list(self.layouts.items()):
            if value.is_graph_output():
                self.taint(layout, f"tensor '{value.name}' is a graph output")
            for user, _ in value.uses():
                if user not in main_nodes:
                    self.taint(layout, f"tensor '{value.name}' is used inside a subgraph")
        return Analysis(self.groups, self.layouts, self.fixups, self.find)

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
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        layout = self.layouts.get(x)
        weight = weight_array(w)
        if weight is None or not w.is_initializer():
            self.unknown(node, "weight is not a constant initializer")
            return
        groups = self.attr_int(node, "group", 1)
        c_out, c_in_per_group = weight.shape[0], weight.shape[1]
        if groups == 1:
            if layout is not None and (layout.axis != 1 or any(s.block != 1 for s in layout.segments)):
                self.taint(layout, f"Conv '{node.name}' input channels are not on axis 1")
            else:
                self.consume(node, layout, 1, 1)
            out = self.produce(node, 1, 0, 1, c_out)
        elif c_in_per_group == 1 and c_out == groups and layout is not None and layout.axis == 1:
            # Depthwise: channel i in, channel i out; the group count follows the channel count.
            if any(s.block != 1 for s in layout.segments):
                self.taint(layout, f"Conv '{node.name}' input channels are not on axis 1")
                return
            out = layout
            self.slot(node, 1, 0, layout, "weight_in")
            self.fixups.append(Fixup("depthwise_group", node, {"layout": layout}))
        else:
            self.unknown(node, f"grouped Conv (group={groups}) is not pruned")
            return
        if bias is not None:
            if not is_constant(bias):
                self.taint(out, f"Conv '{node.name}' bias is not constant")
                self.taint(self.layouts.get(bias), f"Conv '{node.name}' reads it as a bias")
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
        merged: Layout | None = None
        for _, v, layout in layouts:
            shifted = layout.with_axis(layout.axis + out_rank - (self.rank(v) or out_rank))
            merged = shifted if merged is None else self.unify(merged, shifted, node)
            if merged is None:
                self.unknown(node, "joins tensors whose channel layouts do not line up")
                return
        assert merged is not None
        for index, value in present:
            if value in self.layouts:
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
            if not is_constant(value):
                self.unknown(node, f"joins '{value.name}', whose channels no prunable layer produces")
                return
            self.slot(node, index, in_axis, merged, "param")
        self.set_layout(node.outputs[0], merged)

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

    def op_Transpose(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        rank = self.rank(node.inputs[0])
        if layout is None:
            return
        perm = list(node.attributes["perm"].as_ints()) if "perm" in node.attributes else None
        if perm is None:
            if rank is None:
                self.unknown(node, "input rank is unknown")
                return
            perm = list(reversed(range(rank)))
        self.set_layout(node.outputs[0], layout.with_axis(perm.index(layout.axis)))

    def op_Flatten(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        dims = static_dims(node.inputs[0])
        if layout is None:
            return
        if dims is None:
            self.unknown(node, "input shape is unknown")
            return
        axis = self.attr_int(node, "axis", 1) % max(len(dims), 1)
        between, trailing = dims[axis : layout.axis], dims[layout.axis + 1 :]
        if layout.axis < axis or any(d is None for d in between + trailing) or int(np.prod(between or [1])) != 1:
            self.taint(layout, f"Flatten '{node.name}' interleaves the channels with other axes")
            return
        self.set_layout(node.outputs[0], self.stretch(layout, int(np.prod(trailing or [1])), 1))

    @staticmethod
    def stretch(layout: Layout, factor: int, axis: int) -> Layout:
        return Layout(axis, tuple(Segment(s.group, s.count, s.block * factor) for s in layout.segments))

    def op_Reshape(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            return
        if node.inputs[1] in self.layouts:
            self.unknown(node, "shape input depends on the channels")
            return
        in_dims = symbolic_dims(node.inputs[0])
        target = self.shape_entries(node.inputs[1])
        allow_zero = self.attr_int(node, "allowzero", 0)
        if in_dims is None or target is None or allow_zero:
            self.taint(layout, f"Reshape '{node.name}' has a shape the analysis cannot evaluate")
            return
        if self.head_reshape(node, layout, in_dims, target):
            return
        match = match_channel_reshape(in_dims, target, layout.axis, self.attr_int)
        if match is None:
            self.taint(layout, f"Reshape '{node.name}' mixes the channel axis")
            return
        factor, tail = match
        # The rewritten shape copies the leading dims (0), infers the channel axis (-1), keeps the tail.
        self.fixups.append(Fixup("reshape", node, {"target": [0] * layout.axis + [-1] + tail, "layout": layout}))
        self.accepted_reshapes.add(node)
        self.ranks[node.outputs[0]] = len(target)
        self.set_layout(node.outputs[0], self.stretch(layout, factor, layout.axis))

    def head_reshape(self, node: ir.Node, layout: Layout, in_dims: list, target: list) -> bool:
        """Split a channel axis into (heads, head_dim) or merge it back; True when handled."""
        a = layout.axis
        out = [in_dims[i] if entry == 0 and i < len(in_dims) else entry for i, entry in enumerate(target)]
        (segment,) = layout.segments if len(layout.segments) == 1 else (None,)
        if (
            segment is not None
            and segment.group is not None
            and segment.block == 1
            and len(out) == len(in_dims) + 1
            and out[:a] == in_dims[:a]
            and out[a + 2 :] == in_dims[a + 1 :]
            and all(isinstance(e, int) and e > 0 for e in out[a + 2 :])
            and isinstance(out[a], int)
            and out[a] > 1
            and isinstance(out[a + 1], int)
            and out[a] * out[a + 1] == segment.count
            and self.groups[self.find(segment.group)].tile_of is None
        ):
            heads, head_dim = out[a], out[a + 1]
            tile = self.new_group(head_dim, node)
            self.groups[tile].producers = [f"{node.name} (head dim)"]
            self.groups[self.find(segment.group)].tile_of = (tile, heads)
            tail = [e for e in out[a + 2 :]]
            self.fixups.append(Fixup("reshape", node, {"target": [0] * a + [heads, -1] + tail, "layout": layout}))
            self.accepted_reshapes.add(node)
            self.ranks[node.outputs[0]] = len(out)
            self.set_layout(node.outputs[0], Layout(a + 1, (Segment(tile, head_dim),)))
            return True
        if (
            a >= 1
            and len(out) == len(in_dims) - 1
            and out[: a - 1] == in_dims[: a - 1]
            and isinstance(in_dims[a - 1], int)
            and out[a:] == in_dims[a + 1 :]
            and all(isinstance(e, int) and e > 0 for e in out[a:])
            and out[a - 1] in (-1, in_dims[a - 1] * layout.size if isinstance(in_dims[a], int) else None)
            and all(s.block == 1 for s in layout.segments)
        ):
            heads = in_dims[a - 1]
            merged = Layout(a - 1, layout.segments * heads)
            self.fixups.append(Fixup("reshape", node, {"target": [0] * (a - 1) + [-1] + out[a:], "layout": merged}))
            self.accepted_reshapes.add(node)
            self.ranks[node.outputs[0]] = len(out)
            self.set_layout(node.outputs[0], merged)
            return True
        return False

    def shape_entries(self, value: ir.Value) -> list | None:
        """A Reshape target as symbolic entries: from a constant, or evaluated from Shape arithmetic."""
        if value in self.shape_values:
            return self.shape_values[value]
        array = weight_array(value)
        return None if array is None else [int(v) for v in array.reshape(-1)]

    def op_Shape(self, node: ir.Node) -> None:
        data = node.inputs[0]
        layout = self.layouts.get(data)
        dims = symbolic_dims(data)
        if dims is None:
            self.unknown(node, "reads the shape of a tensor of unknown rank")
            return
        if layout is not None:
            dims[layout.axis] = CHANNELS
            self.shape_reads.append((node.outputs[0], layout, node))
        start, end = self.attr_int(node, "start", 0), self.attr_int(node, "end", len(dims))
        self.shape_values[node.outputs[0]] = dims[start:end]

    def eval_shape_op(self, node: ir.Node) -> bool:
        """Follow shape arithmetic (Cast/Slice/Gather/Concat/(Un)Squeeze on Shape outputs); False if it is not."""
        inputs = [self.shape_entries(v) if v is not None else None for v in node.inputs]
        if node.inputs and node.inputs[0] not in self.shape_values and node.op_type != "Concat":
            return False
        if node.op_type == "Concat" and not any(v in self.shape_values for v in node.inputs if v is not None):
            return False
        data = inputs[0]
        result: list | None = None
        if node.op_type in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
            result = data
        elif node.op_type == "Concat" and all(part is not None for part in inputs):
            result = [entry for part in inputs for entry in part]
        elif node.op_type == "Gather" and data is not None and inputs[1] is not None:
            result = [data[i] for i in inputs[1]] if all(-len(data) <= i < len(data) for i in inputs[1]) else None
        elif node.op_type == "Slice" and data is not None and inputs[1] is not None and inputs[2] is not None:
            steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1]
            result = data[inputs[1][0] : inputs[2][0] : steps[0]]
        if result is None:
            return False
        self.shape_values[node.outputs[0]] = list(result)
        return True

    def check_shape_reads(self) -> None:
        """A Shape of channel-carrying tensors is fine only when it ends in Reshapes the rewrite replaces."""
        for start, layout, shape_node in self.shape_reads:
            pending, seen = [start], set()
            while pending:
                value = pending.pop()
                for user, index in value.uses():
                    if user in seen:
                        continue
                    seen.add(user)
                    if user.op_type == "Reshape" and index == 1 and user in self.accepted_reshapes:
                        continue
                    if user.op_type in SHAPE_OPS and user.outputs[0] in self.shape_values:
                        pending.append(user.outputs[0])
                        continue
                    self.taint(
                        layout, f"Shape '{shape_node.name}' reads the channel count ({user.op_type} '{user.name}')"
                    )

    def op_Squeeze(self, node: ir.Node) -> None:
        self.squeeze_like(node, insert=False)

    def op_Unsqueeze(self, node: ir.Node) -> None:
        self.squeeze_like(node, insert=True)

    def squeeze_like(self, node: ir.Node, insert: bool) -> None:
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            return
        axes = self.int_list(node, "axes", 1)
        out_rank, in_rank = self.rank(node.outputs[0]), self.rank(node.inputs[0])
        if axes is None or out_rank is None or in_rank is None:
            self.unknown(node, "axes or ranks are unknown")
            return
        if insert:
            axes = sorted(x % out_rank for x in axes)
            kept = [i for i in range(out_rank) if i not in axes]
            self.set_layout(node.outputs[0], layout.with_axis(kept[layout.axis]))
        else:
            axes = [x % in_rank for x in axes]
            if layout.axis in axes:
                self.taint(layout, f"Squeeze '{node.name}' removes the channel axis")
                return
            self.set_layout(node.outputs[0], layout.with_axis(layout.axis - sum(x < layout.axis for x in axes)))

    def op_reduce(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            return
        rank = self.rank(node.inputs[0])
        axes = self.int_list(node, "axes", 1)
        if rank is None or not axes:
            self.taint(layout, f"{node.op_type} '{node.name}' reduces over all axes or unknown axes")
            return
        axes = [x % rank for x in axes]
        if layout.axis in axes:
            self.taint(layout, f"{node.op_type} '{node.name}' reduces over the channel axis")
            return
        keep = self.attr_int(node, "keepdims", 1)
        axis = layout.axis if keep else layout.axis - sum(x < layout.axis for x in axes)
        self.set_layout(node.outputs[0], layout.with_axis(axis))

    def op_Gather(self, node: ir.Node) -> None:
        data, indices = node.inputs[0], node.inputs[1]
        layout = self.layouts.get(data)
        if indices in self.layouts:
            self.unknown(node, "indices depend on the channels")
            return
        rank, idx_rank = self.rank(data), self.rank(indices)
        table = weight_array(data)
        if layout is None and table is not None and table.ndim == 2 and idx_rank is not None and data.is_initializer():
            if self.attr_int(node, "axis", 0) % 2 == 0 and np.issubdtype(table.dtype, np.floating):
                # An embedding lookup: its feature columns are channels like a layer's outputs.
                self.set_layout(node.outputs[0], self.produce(node, 0, 1, idx_rank, table.shape[1]))
            return
        if layout is None:
            return
        if rank is None or idx_rank is None:
            self.unknown(node, "ranks are unknown")
            return
        axis = self.attr_int(node, "axis", 0) % rank
        if axis == layout.axis:
            self.taint(layout, f"Gather '{node.name}' selects along the channel axis")
            return
        out_axis = layout.axis if layout.axis < axis else layout.axis + idx_rank - 1
        self.set_layout(node.outputs[0], layout.with_axis(out_axis))

    def op_Pad(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            return
        pads = self.int_list(node, "pads", 1)
        rank = self.rank(node.inputs[0])
        if pads is None or rank is None or len(node.inputs) > 3 and node.inputs[3] is not None:
            self.unknown(node, "pads are computed or restricted to axes")
            return
        if pads[layout.axis] or pads[layout.axis + rank]:
            self.taint(layout, f"Pad '{node.name}' pads the channel axis")
            return
        self.set_layout(node.outputs[0], layout)

    def op_Concat(self, node: ir.Node) -> None:
        inputs = [v for v in node.inputs if v is not None]
        layouts = [self.layouts.get(v) for v in inputs]
        if not any(layouts):
            return
        rank = self.rank(node.outputs[0])
        if rank is None:
            self.unknown(node, "output rank is unknown")
            return
        axis = self.attr_int(node, "axis", 0) % rank
        channel_axes = {lay.axis for lay in layouts if lay is not None}
        if len(channel_axes) != 1:
            self.unknown(node, "inputs carry channels on different axes")
            return
        (channel_axis,) = channel_axes
        if axis != channel_axis:
            merged: Layout | None = None
            for lay in layouts:
                if lay is not None:
                    merged = lay if merged is None else self.unify(merged, lay, node)
                    if merged is None:
                        self.unknown(node, "joins tensors whose channel layouts do not line up")
                        return
            for v, lay in zip(inputs, layouts, strict=True):
                dims = static_dims(v)
                if lay is None and (dims is None or dims[channel_axis] != 1):
                    self.unknown(node, f"input '{v.name}' carries channels the analysis cannot prune")
                    return
            assert merged is not None
            self.set_layout(node.outputs[0], merged)
            return
        segments: list[Segment] = []
        for v, lay in zip(inputs, layouts, strict=True):
            if lay is not None:
                segments.extend(lay.segments)
                continue
            dims = static_dims(v)
            if dims is None or dims[axis] is None:
                self.unknown(node, f"input '{v.name}' has an unknown channel count")
                return
            segments.append(Segment(None, dims[axis]))
        self.set_layout(node.outputs[0], Layout(axis, tuple(segments)))

    def op_Split(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            return
        rank = self.rank(node.inputs[0])
        if rank is None:
            self.unknown(node, "input rank is unknown")
            return
        axis = self.attr_int(node, "axis", 0) % rank
        if axis != layout.axis:
            for out in node.outputs:
                self.set_layout(out, layout)
            return
        sizes = self.int_list(node, "split", 1)
        if sizes is None:
            parts = len(node.outputs)
            if layout.size % parts:
                self.unknown(node, "uneven implicit split")
                return
            sizes = [layout.size // parts] * parts
        pieces = self.cut(layout, sizes)
        if pieces is None:
            self.taint(layout, f"Split '{node.name}' cuts through a channel group")
            return
        for out, piece in zip(node.outputs, pieces, strict=True):
            self.set_layout(out, piece)
        self.fixups.append(Fixup("split", node, {}))

    @staticmethod
    def cut(layout: Layout, sizes: list[int]) -> list[Layout] | None:
        """Split segments at the given sizes; None when a boundary falls inside a segment."""
        pieces: list[Layout] = []
        segments = list(layout.segments)
        for size in sizes:
            taken: list[Segment] = []
            while size > 0 and segments:
                seg = segments.pop(0)
                if seg.width > size:
                    return None
                taken.append(seg)
                size -= seg.width
            if size:
                return None
            pieces.append(Layout(layout.axis, tuple(taken)))
        return pieces

    def op_Slice(self, node: ir.Node) -> None:
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            return
        if any(v in self.layouts for v in node.inputs[1:] if v is not None):
            self.unknown(node, "bounds depend on the channels")
            return
        if "starts" in node.attributes:
            self.unknown(node, "Slice with bounds as attributes (opset < 10) is not rewritten")
            return
        rank = self.rank(node.inputs[0])
        starts, ends = self.int_list(node, "starts", 1), self.int_list(node, "ends", 2)
        axes = self.int_list(node, "axes", 3)
        steps = self.int_list(node, "steps", 4)
        if rank is None or starts is None or ends is None:
            self.unknown(node, "bounds are computed")
            return
        axes = [x % rank for x in (axes if axes is not None else range(len(starts)))]
        if layout.axis not in axes:
            self.set_layout(node.outputs[0], layout)
            return
        pos = axes.index(layout.axis)
        if steps is not None and steps[pos] != 1:
            self.taint(layout, f"Slice '{node.name}' steps over the channels")
            return
        size = layout.size
        start = min(max(starts[pos] + size if starts[pos] < 0 else starts[pos], 0), size)
        end = min(max(ends[pos] + size if ends[pos] < 0 else ends[pos], 0), size)
        pieces = self.cut(layout, [start, max(end - start, 0), size - max(end, start)])
        if pieces is None:
            self.taint(layout, f"Slice '{node.name}' cuts through a channel group")
            return
        self.set_layout(node.outputs[0], pieces[1])
        self.fixups.append(Fixup("slice", node, {"pos": pos, "before": pieces[0], "inside": pieces[1]}))


def analyze(model: ir.Model, exclude: set[str] | None = None) -> Analysis:
    """Channel groups of the model's main graph; groups touched by anything not understood carry reasons."""
    return _Walker(model, exclude or set()).run()
