"""Channel-analysis rules for LSTM, GRU and RNN: the hidden size is a prunable group.

ONNX packs the gates along one axis: W [dirs, gates*H, input], R [dirs, gates*H, H], B [dirs, 2*gates*H]
(LSTM peepholes P [dirs, 3*H]). Hidden unit h owns row h of every gate block, column h of R (it feeds
every gate of the next step) and position h of the states. Both directions of a bidirectional layer lose
the same units, so Y [seq, dirs, batch, H] keeps a (dirs, H) layout that the usual Transpose/Reshape
merge into 2*H features downstream. The input size shrinks with the incoming groups (W's last axis).
"""

from __future__ import annotations

import onnx_ir as ir

from compression.pruning.fills import zero_filled
from compression.pruning.layout import Fixup, Layout, Segment
from compression.pruning.model_io import is_constant, weight_array

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}


class RecurrentOps:
    """Mixed into the walker (compression.pruning.dependency._Walker)."""

    layouts: dict[ir.Value, Layout]
    fixups: list[Fixup]
    ranks: dict[ir.Value, int]
    scalarized: set[tuple[ir.Node, int]]

    def op_LSTM(self, node: ir.Node) -> None:
        self.recurrent(node)

    def op_GRU(self, node: ir.Node) -> None:
        self.recurrent(node)

    def op_RNN(self, node: ir.Node) -> None:
        self.recurrent(node)

    def recurrent(self, node: ir.Node) -> None:
        inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
        x, w, r = inputs[0], inputs[1], inputs[2]
        weights = [weight_array(w), weight_array(r)]
        if any(a is None or a.ndim != 3 for a in weights) or not w.is_initializer() or not r.is_initializer():
            self.unknown(node, "weights W and R are not constant 3-D initializers")
            return
        gates = GATES[node.op_type]
        hidden = self.attr_int(node, "hidden_size", weights[1].shape[2])
        if weights[0].shape[1] != gates * hidden or weights[1].shape[1:] != (gates * hidden, hidden):
            self.unknown(node, "weight shapes do not match hidden_size")
            return
        extras = [(3, 2 * gates)] + ([(7, 3)] if node.op_type == "LSTM" else [])
        for index, _ in extras:
            value = inputs[index]
            if value is not None and not is_constant(value):
                self.unknown(node, f"input {index} ('{value.name}') is not constant")
                return
        # The input size: W's last axis shrinks with the incoming channel groups.
        layout = self.layouts.get(x)
        if layout is not None and layout.axis != 2:
            self.taint(layout, f"{node.op_type} '{node.name}' input features are not on the last axis")
        elif layout is not None:
            self.consume(node, layout, 1, 2)
        # The hidden size: one group for every gate block, both directions.
        gid = self.new_group(hidden, node)
        unit = Layout(1, (Segment(gid, hidden),))
        for k in range(gates):
            self.slot(node, 1, 1, self.shifted(unit, k * hidden), "weight_out")
            self.slot(node, 2, 1, self.shifted(unit, k * hidden), "weight_out")
        self.slot(node, 2, 2, unit, "weight_in")
        for index, blocks in extras:
            if inputs[index] is not None:
                for k in range(blocks):
                    self.slot(node, index, 1, self.shifted(unit, k * hidden), "param")
        zero_states = [i for i in STATE_INPUTS[node.op_type] if self.state_input(node, i, inputs[i], unit)]
        self.fixups.append(Fixup("rnn_hidden", node, {"layout": unit, "drop_inputs": zero_states}))
        # Y [seq, dirs, batch, H] (layout=1: [batch, seq, dirs, H]); Y_h, Y_c [dirs, batch, H] ([batch, dirs, H]).
        for position, out in enumerate(node.outputs):
            if out is None or not (out.uses() or out.is_graph_output()):
                continue
            rank = 4 if position == 0 else 3
            self.ranks[out] = rank
            self.set_layout(out, Layout(rank - 1, unit.segments))

    def state_input(self, node: ir.Node, index: int, value: ir.Value | None, unit: Layout) -> bool:
        """An initial state [dirs, batch, H]: a constant shrinks with the units, channels coming in join the
        units' group, zeros (ConstantOfShape/Expand of 0, however sliced) are dropped (ONNX's default state is
        zero). True when the input is such zeros."""
        if value is None:
            return False
        incoming = self.layouts.get(value)
        if incoming is not None:
            if incoming.axis != 2 or self.unify(incoming.with_axis(0), unit.with_axis(0), node) is None:
                self.taint(unit, f"{node.op_type} '{node.name}' initial state carries channels that do not line up")
            return False
        if is_constant(value):
            dims = value.const_value.shape
            if len(dims) == 3 and dims[2] != 1:
                self.slot(node, index, 2, unit, "param")
            return False
        if zero_filled(value):
            self.scalarized.add((node, index))  # dropped by the rewrite: a Shape feeding it may change freely
            return True
        source = "a graph input" if value.is_graph_input() else "computed outside the analysis"
        self.taint(unit, f"{node.op_type} '{node.name}' initial state '{value.name}' is {source}")
        return False

    @staticmethod
    def shifted(layout: Layout, offset: int) -> Layout:
        """The layout placed `offset` positions further along its axis (a gate block inside a packed weight)."""
        return Layout(layout.axis, (Segment(None, offset), *layout.segments)) if offset else layout
