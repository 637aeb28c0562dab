"""The channel analysis' group bookkeeping: a union-find of channel groups, the layouts that refer to them,
and the cuts a Split/Slice makes inside a group (it becomes pieces, each pruned on its own)."""

from __future__ import annotations

import re
from collections.abc import Callable

import onnx_ir as ir

from compression.pruning.layout import Group, Layout, Segment, Slot, SlotRole, leaves


class GroupBook:
    """Groups, their union-find, and the tensors' layouts; the walker (dependency._Walker) builds on it."""

    def __init__(self, exclude: set[str]) -> None:
        self.exclude = exclude
        self.groups: list[Group] = []
        self.parent: list[int] = []
        self.layouts: dict[ir.Value, Layout] = {}

    cut: Callable[[Layout, list[int]], list[Layout] | None]  # AxisOps.cut, mixed in by the walker

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


def _ranged(producer: str, begin: int, size: int) -> str:
    """A producer name with the channel range a piece holds, relative to the producer's own channels."""
    match = re.fullmatch(r"(.*)\[(\d+):(\d+)\]", producer)
    base, offset = (match.group(1), int(match.group(2))) if match else (producer, 0)
    return f"{base}[{offset + begin}:{offset + begin + size}]"
