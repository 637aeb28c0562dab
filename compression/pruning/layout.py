"""The channel analysis' data model: where channels sit in each tensor, the groups that own them, and what
must shrink with each group."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import onnx_ir as ir

SlotRole = Literal["weight_out", "weight_in", "scale", "param"]


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
    # Set when a Split/Slice cut the group: its channels are now these groups' (id, count), in order.
    pieces: list[tuple[int, int]] | None = None

    @property
    def prunable(self) -> bool:
        return not self.reasons


def leaves(groups: list[Group], find: Callable[[int], int], gid: int) -> list[tuple[int, int]]:
    """The live groups (root id, channel count) that hold a group's channels, in channel order."""
    root = find(gid)
    group = groups[root]
    if group.pieces is None:
        return [(root, group.size)]
    return [leaf for piece, _ in group.pieces for leaf in leaves(groups, find, piece)]


@dataclass
class Fixup:
    """A shape-carrying attribute or input that must follow the new channel counts (Split sizes, Slice bounds...)."""

    kind: Literal["depthwise_group", "split", "slice", "reshape", "expand", "rnn_hidden", "scalar_input", "freeze"]
    node: ir.Node
    detail: dict


@dataclass
class Analysis:
    groups: list[Group]
    layouts: dict[ir.Value, Layout]
    fixups: list[Fixup]
    find: Callable[[int], int]

    def roots(self) -> list[Group]:
        """The live groups: union-find roots that no Split/Slice cut into pieces."""
        return [g for g in self.groups if self.find(g.id) == g.id and g.pieces is None]

    def leaves(self, gid: int) -> list[tuple[int, int]]:
        return leaves(self.groups, self.find, gid)

    def tiles(self) -> dict[int, list[tuple[Group, int]]]:
        """Root of each head-dim group -> the groups made of `repeats` copies of it."""
        out: dict[int, list[tuple[Group, int]]] = {}
        for group in self.roots():
            if group.tile_of is not None:
                out.setdefault(self.find(group.tile_of[0]), []).append((group, group.tile_of[1]))
        return out
