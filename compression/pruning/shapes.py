"""Symbolic shapes for the channel analysis: dims that may be unknown, and how a Reshape regroups axes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

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


@dataclass(frozen=True)
class AxisGroup:
    """Input axes first_in..last_in of a Reshape hold exactly the elements of output axes first_out..last_out."""

    first_in: int
    last_in: int
    first_out: int
    last_out: int


def _factors(entries: list) -> tuple[int, tuple]:
    known = int(np.prod([e for e in entries if isinstance(e, int)] or [1]))
    return known, tuple(sorted((e for e in entries if not isinstance(e, int)), key=repr))


def _scan(in_dims: list, out: list) -> tuple[list[AxisGroup], int, int]:
    """Groups closed from the left, and the input/output positions where the scan stopped (a -1, a mismatch)."""
    groups: list[AxisGroup] = []
    i = j = 0
    while i < len(in_dims) and j < len(out):
        first_in, first_out = i, j
        taken_in, taken_out = [in_dims[i]], [out[j]]
        while -1 not in taken_out:
            (n_in, s_in), (n_out, s_out) = _factors(taken_in), _factors(taken_out)
            if n_in == n_out and s_in == s_out:
                break
            grow_out = bool(set(s_in) - set(s_out)) or (not set(s_out) - set(s_in) and n_in > n_out)
            if grow_out and j + 1 < len(out):
                j += 1
                taken_out.append(out[j])
            elif not grow_out and i + 1 < len(in_dims):
                i += 1
                taken_in.append(in_dims[i])
            else:
                return groups, first_in, first_out
        else:
            return groups, first_in, first_out
        # Size-1 axes right after a group belong to it (they never hold channels of their own).
        while i + 1 < len(in_dims) and in_dims[i + 1] == 1 and (j + 1 >= len(out) or out[j + 1] != 1):
            i += 1
        groups.append(AxisGroup(first_in, i, first_out, j))
        i, j = i + 1, j + 1
    return groups, i, j


def reshape_group(in_dims: list, out: list, axis: int) -> AxisGroup | None:
    """The group of axes holding input `axis` in a Reshape from `in_dims` to `out` (0s already resolved).

    Groups are closed from the left and, mirrored, from the right; what lies between (around a -1 or
    dims that cannot be matched) is one group. None when the channel axis falls in a group that cannot
    be told apart: the Reshape mixes it with other axes in a way the analysis does not follow.
    """
    n_in, n_out = len(in_dims) - 1, len(out) - 1
    left, i, j = _scan(in_dims, out)
    right_mirrored, ri, rj = _scan(in_dims[::-1], out[::-1])
    right = [AxisGroup(n_in - g.last_in, n_in - g.first_in, n_out - g.last_out, n_out - g.first_out)
             for g in right_mirrored]  # fmt: skip
    for group in [*left, *right]:
        if group.first_in <= axis <= group.last_in:
            return group
    last_in, last_out = n_in - ri, n_out - rj
    if not (i <= axis <= last_in) or j > last_out:
        return None
    middle_out = out[j : last_out + 1]
    if middle_out.count(-1) > 1 or (
        -1 not in middle_out and _factors(in_dims[i : last_in + 1]) != _factors(middle_out)
    ):
        return None
    return AxisGroup(i, last_in, j, last_out)
