"""Channel-analysis rules for Reshape: flattening, attention head split/merge, and Reshape targets
computed from `Shape` (evaluated symbolically so the rewrite can replace them with constants)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compression.pruning.fills import FILL_PRESERVING
from compression.pruning.layout import Fixup, Layout, Segment
from compression.pruning.model_io import static_dims, weight_array
from compression.pruning.shapes import CHANNELS, SHAPE_OPS, reshape_group, symbolic_dims


class ReshapeOps:
    """Mixed into the walker: Reshape handling and the Shape arithmetic feeding it."""

    # State and helpers provided by the walker (compression.pruning.dependency._Walker).
    layouts: dict[ir.Value, Layout]
    fixups: list[Fixup]
    shape_values: dict[ir.Value, list]
    shape_reads: list[tuple[ir.Value, Layout, ir.Node]]
    accepted_reshapes: set[ir.Node]
    scalarized: set[tuple[ir.Node, int]]
    frozen: dict[ir.Value, np.ndarray]
    ranks: dict[ir.Value, int]

    def op_Reshape(self, node: ir.Node) -> None:
        """A Reshape keeps channels prunable when the axes around the channel axis regroup cleanly: the
        channel axis alone (moved), merged with known axes before it (each channel repeats) or after it
        (each channel owns a block), or split into (heads..., head_dim) (a head-dim group)."""
        layout = self.layouts.get(node.inputs[0])
        if layout is None:
            return
        if node.inputs[1] in self.layouts:
            self.unknown(node, "shape input depends on the channels")
            return
        in_dims = symbolic_dims(node.inputs[0])
        target = self.shape_entries(node.inputs[1])
        literal_zero = self.attr_int(node, "allowzero", 0) and target is not None and 0 in target
        if in_dims is None or target is None or literal_zero:
            self.taint(layout, f"Reshape '{node.name}' has a shape the analysis cannot evaluate")
            return
        a = layout.axis
        out = [in_dims[i] if entry == 0 and i < len(in_dims) else entry for i, entry in enumerate(target)]
        read_at = [k for k, entry in enumerate(out) if entry == CHANNELS]
        out = [in_dims[a] if entry == CHANNELS else entry for entry in out]
        group = reshape_group(in_dims, out, a)
        if group is None or any(not group.first_out <= k <= group.last_out for k in read_at):
            self.taint(layout, f"Reshape '{node.name}' mixes the channel axis with other axes")
            return
        self.ranks[node.outputs[0]] = len(out)
        # Size-1 axes hold no channels: the group's other axes decide between a split and a merge.
        ins = [k for k in range(group.first_in, group.last_in + 1) if k == a or in_dims[k] != 1]
        outs = [k for k in range(group.first_out, group.last_out + 1) if out[k] != 1] or [group.last_out]
        if ins == [a] and len(outs) > 1:
            self.split_heads(node, layout, [out[k] for k in outs], outs[-1])
            return
        before, after = in_dims[group.first_in : a], in_dims[a + 1 : group.last_in + 1]
        outer = [out[k] for k in outs[:-1]]  # output axes of the group before the channel axis
        if not all(isinstance(d, int) for d in before + after + outer):
            self.taint(layout, f"Reshape '{node.name}' mixes the channel axis with other axes")
            return
        repeats, block = int(np.prod(before or [1])), int(np.prod(after or [1]))
        if outer:  # [..., X, C] -> [..., X/r, r*C] (space-to-depth): each channel repeats r times per row
            last, width = out[outs[-1]], layout.size * block
            if not isinstance(last, int) or last % width or int(np.prod(outer)) * (last // width) != repeats:
                self.taint(layout, f"Reshape '{node.name}' mixes the channel axis with other axes")
                return
            repeats = last // width
        merged = self.stretch(layout, block, outs[-1])
        merged = Layout(merged.axis, merged.segments * repeats)
        self.accept_reshape(node, outs[-1], layout, merged)
        self.set_layout(node.outputs[0], merged)

    def split_heads(self, node: ir.Node, layout: Layout, dims: list, head_axis: int) -> None:
        """The channel axis split into (heads..., head_dim): the group becomes `heads` copies of a head-dim
        group, pruned at the same indices in every head (q/k/v of one attention block share them)."""
        (segment,) = layout.segments if len(layout.segments) == 1 else (None,)
        heads = int(np.prod(dims[:-1])) if all(isinstance(d, int) and d > 0 for d in dims[:-1]) else 0
        head_dim = dims[-1]
        if (
            segment is None
            or segment.group is None
            or segment.block != 1
            or heads < 2
            or not isinstance(head_dim, int)
            or heads * head_dim != segment.count
            or self.groups[self.find(segment.group)].tile_of is not None
        ):
            self.taint(layout, f"Reshape '{node.name}' splits the channel axis in a way the analysis cannot follow")
            return
        tile = self.new_group(head_dim, node)
        self.groups[tile].producers = [f"{node.name} (head dim)"]
        self.groups[self.find(segment.group)].tile_of = (tile, heads)
        out_layout = Layout(head_axis, (Segment(tile, head_dim),))
        self.accept_reshape(node, head_axis, layout, out_layout)
        self.set_layout(node.outputs[0], out_layout)

    def accept_reshape(self, node: ir.Node, index: int, layout: Layout, out_layout: Layout) -> None:
        """The rewrite sets target entry `index` to the pruned size of `out_layout` (patching a computed target)."""
        self.fixups.append(Fixup("reshape", node, {"index": index, "layout": layout, "out_layout": out_layout}))
        self.accepted_reshapes.add(node)

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
        """A Shape of channel-carrying tensors is fine when its channel count ends in Reshapes/Expands the rewrite
        patches, in fills read as scalars, or in float arithmetic (an attention scale 1/sqrt(head_dim)): that
        value is frozen to the unpruned count, so the pruned model scales as the original did."""
        for start, layout, shape_node in self.shape_reads:
            pending, seen = [start], set()
            while pending:
                value = pending.pop()
                if CHANNELS not in self.shape_values.get(value, [CHANNELS]):
                    continue  # this part of the shape (a batch size, a spatial dim) does not hold the count
                for user, index in value.uses():
                    if user in seen:
                        continue
                    seen.add(user)
                    if user.op_type in ("Reshape", "Expand") and index == 1 and user in self.accepted_reshapes:
                        continue
                    if user.op_type in SHAPE_OPS and user.outputs[0] in self.shape_values:
                        pending.append(user.outputs[0])
                        continue
                    if self.fill_is_dropped(user, index) or self.freeze(value, layout):
                        continue
                    self.taint(
                        layout, f"Shape '{shape_node.name}' reads the channel count ({user.op_type} '{user.name}')"
                    )

    def freeze(self, value: ir.Value, layout: Layout) -> bool:
        """Replace a float value computed from the channel count by its unpruned constant; False if it is not one."""
        if value in self.frozen:
            return True
        entries, dims = self.shape_values.get(value), static_dims(value)
        dtype = value.type.dtype if isinstance(value.type, ir.TensorType) else None
        if (
            entries is None
            or dims is None
            or len(dims) > 1
            or dtype is None
            or not dtype.is_floating_point()
            or value.is_graph_output()
            or not all(isinstance(e, int) or e == CHANNELS for e in entries)
        ):
            return False
        numbers = [layout.size if e == CHANNELS else e for e in entries]
        array = np.asarray(numbers if dims else numbers[0], dtype=dtype.numpy())
        if dims and array.shape != (len(numbers),):
            return False
        self.frozen[value] = array
        self.fixups.append(Fixup("freeze", value.producer(), {"value": value, "array": array, "layout": layout}))
        return True

    def fill_is_dropped(self, user: ir.Node, index: int) -> bool:
        """The Shape feeds a fill (ConstantOfShape, Expand's shape) that every reader takes as a scalar."""
        if not (user.op_type == "ConstantOfShape" and index == 0) and not (user.op_type == "Expand" and index == 1):
            return False
        pending = [user.outputs[0]]
        while pending:
            value = pending.pop()
            if value.is_graph_output():
                return False
            for reader, position in value.uses():
                if (reader, position) in self.scalarized:
                    continue
                if reader.op_type in FILL_PRESERVING and position == 0:
                    pending.append(reader.outputs[0])
                    continue
                return False
        return True
