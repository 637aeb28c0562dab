"""Channel-analysis rules for Reshape: flattening, attention head split/merge, and Reshape targets
computed from `Shape` (evaluated symbolically so the rewrite can replace them with constants)."""

from __future__ import annotations

import onnx_ir as ir

from compression.pruning.layout import Fixup, Layout, Segment
from compression.pruning.model_io import weight_array
from compression.pruning.shapes import CHANNELS, SHAPE_OPS, match_channel_reshape, symbolic_dims


class ReshapeOps:
    """Mixed into the walker: Reshape handling and the Shape arithmetic feeding it."""

    # State and helpers provided by the walker (compression.pruning.dependency._Walker).
    layouts: dict[ir.Value, Layout]
    fixups: list[Fixup]
    shape_values: dict[ir.Value, list]
    shape_reads: list[tuple[ir.Value, Layout, ir.Node]]
    accepted_reshapes: set[ir.Node]
    ranks: dict[ir.Value, int]

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
        match = match_channel_reshape(in_dims, target, layout.axis)
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
