"""Channel-analysis rules for ops that move, cut or join the channel axis without weights:
Transpose, Flatten, (Un)Squeeze, reductions, Gather, Pad, Concat, Split, Slice."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compression.pruning.layout import Fixup, Layout, Segment
from compression.pruning.model_io import static_dims, weight_array


class AxisOps:
    """Mixed into the walker: each `op_X` maps a node's input layouts to its outputs' (or taints them)."""

    # State and helpers provided by the walker (compression.pruning.dependency._Walker).
    layouts: dict[ir.Value, Layout]
    fixups: list[Fixup]

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
        pieces = self.cut_groups(layout, sizes)
        if pieces is None:
            self.taint(layout, f"Split '{node.name}' cuts through a channel group at a position it cannot cut")
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
        pieces = self.cut_groups(layout, [start, max(end - start, 0), size - max(end, start)])
        if pieces is None:
            self.taint(layout, f"Slice '{node.name}' cuts through a channel group at a position it cannot cut")
            return
        self.set_layout(node.outputs[0], pieces[1])
        self.fixups.append(Fixup("slice", node, {"pos": pos, "before": pieces[0], "inside": pieces[1]}))

    def op_Expand(self, node: ir.Node) -> None:
        """Broadcast other axes: the shape's entry on the channel axis becomes 1 (the channels broadcast
        to themselves), so it holds whatever the channel count becomes."""
        layout = self.layouts.get(node.inputs[0])
        if node.inputs[1] in self.layouts:
            self.unknown(node, "shape input depends on the channels")
            return
        if layout is None:
            return
        in_rank, shape_dims = self.rank(node.inputs[0]), static_dims(node.inputs[1])
        if in_rank is None or shape_dims is None or len(shape_dims) != 1 or shape_dims[0] is None:
            self.unknown(node, "ranks are unknown")
            return
        out_rank = max(in_rank, shape_dims[0])
        axis = layout.axis + out_rank - in_rank
        position = axis - (out_rank - shape_dims[0])
        if position >= 0:
            self.fixups.append(Fixup("expand", node, {"index": position, "layout": layout}))
        self.accepted_reshapes.add(node)
        self.ranks[node.outputs[0]] = out_rank
        self.set_layout(node.outputs[0], layout.with_axis(axis))

    def op_ReverseSequence(self, node: ir.Node) -> None:
        """Reverses time steps per batch entry: channels on any other axis pass through."""
        layout = self.layouts.get(node.inputs[0])
        if node.inputs[1] in self.layouts:
            self.unknown(node, "sequence lengths depend on the channels")
            return
        if layout is None:
            return
        if layout.axis in (self.attr_int(node, "batch_axis", 1), self.attr_int(node, "time_axis", 0)):
            self.taint(layout, f"ReverseSequence '{node.name}' reverses along the channel axis")
            return
        self.set_layout(node.outputs[0], layout)
