"""Channel-analysis rules for ops that keep channels where they are: activations, pooling, elementwise joins
(residual Adds merge groups; per-channel constants shrink; uniform fills become scalars), normalizations."""

from __future__ import annotations

import onnx_ir as ir

from compression.pruning.fills import uniform_fill
from compression.pruning.layout import Fixup, Layout
from compression.pruning.model_io import is_constant, static_dims
from compression.pruning.shapes import symbolic_dims

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


class ElementwiseOps:
    """Mixed into the walker (compression.pruning.dependency._Walker)."""

    layouts: dict[ir.Value, Layout]
    fixups: list[Fixup]
    ranks: dict[ir.Value, int]
    scalarized: set[tuple[ir.Node, int]]

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
