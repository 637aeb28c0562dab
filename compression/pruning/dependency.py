"""Channel dependency groups of an ONNX graph, the way DepGraph builds them for PyTorch modules.

Every Conv/ConvTranspose/Gemm/MatMul with a constant weight, every LSTM/GRU/RNN and every embedding Gather
starts a group: its output channels. The analysis walks the graph (and every If/Loop/Scan body, where its
node stands) in topological order and tracks, for each tensor, which axis carries channels and which
group owns each range of it (a `Layout`). Ops that pass channels through carry the layout on; joins
(Add/Mul/...) merge the groups they meet; Concat lays groups side by side; Split/Slice cut them back (into
pieces where a boundary falls inside a group); Flatten/Reshape regroup axes around the channels. Every
constant that must shrink with a group is recorded as a `Slot`. Whatever the walk does not understand
marks the groups it touches as unprunable, with the reason, so the rewrite never has to guess.

The op rules live in mixins: `group_book` (groups, union-find, cuts), `axis_ops` (Transpose, Concat,
Split, Slice, Gather, Pad, Expand...), `reshape_ops` (Reshape, Shape arithmetic), `recurrent_ops`
(LSTM/GRU/RNN), `elementwise_ops` (activations, joins, normalizations); weighted layers are here.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compression.pruning.axis_ops import AxisOps
from compression.pruning.elementwise_ops import BROADCAST_JOINS, SPATIAL_PASSTHROUGH, UNARY_PASSTHROUGH, ElementwiseOps
from compression.pruning.group_book import GroupBook
from compression.pruning.layout import Analysis, Fixup, Layout, Segment
from compression.pruning.model_io import is_constant, static_dims, weight_array
from compression.pruning.recurrent_ops import RecurrentOps
from compression.pruning.reshape_ops import ReshapeOps
from compression.pruning.shapes import SHAPE_OPS

REDUCTIONS = frozenset(
    {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
)  # fmt: skip


class _Walker(GroupBook, AxisOps, ReshapeOps, RecurrentOps, ElementwiseOps):
    def __init__(self, model: ir.Model, exclude: set[str]) -> None:
        super().__init__(exclude)
        self.model = model
        self.fixups: list[Fixup] = []
        self.shape_values: dict[ir.Value, list] = {}
        self.shape_reads: list[tuple[ir.Value, Layout, ir.Node]] = []
        self.accepted_reshapes: set[ir.Node] = set()
        self.ranks: dict[ir.Value, int] = {}
        self.scalarized: set[tuple[ir.Node, int]] = set()
        self.frozen: dict[ir.Value, np.ndarray] = {}

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


def analyze(model: ir.Model, exclude: set[str] | None = None) -> Analysis:
    """Channel groups of the model's main graph; groups touched by anything not understood carry reasons."""
    return _Walker(model, exclude or set()).run()
