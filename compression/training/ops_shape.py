"""Shape arithmetic and tensor layout ops (Shape, Reshape, Slice, Gather, Concat, Pad, Resize...) in torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compression.training.op_registry import Inputs, NodeInfo, OpOutput, Tensor, register


def _ints(x: Tensor | None) -> list[int]:
    return [] if x is None else [int(v) for v in x.reshape(-1).tolist()]


@register("Constant")
def constant_value(xs: Inputs, node: NodeInfo) -> Tensor:
    """Non-trainable Constant values (trainable float ones are parameters, see graph_module)."""
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64)):
        if key in node.attrs:
            return torch.tensor(node.attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in node.attrs:
            return torch.tensor(list(node.attrs[key]), dtype=dtype)
    if "value" in node.attrs:
        return node.attrs["value"]
    raise ValueError(f"Constant node {node.name!r} has no supported value attribute")


@register("Shape")
def _shape(xs: Inputs, node: NodeInfo) -> Tensor:
    dims = list(xs[0].shape)
    start, end = node.attr("start", 0), node.attr("end", None)
    return torch.tensor(dims[start:end], dtype=torch.int64)


@register("Size")
def _size(xs: Inputs, node: NodeInfo) -> Tensor:
    return torch.tensor(xs[0].numel(), dtype=torch.int64)


@register("Reshape")
def _reshape(xs: Inputs, node: NodeInfo) -> Tensor:
    x, shape = xs[0], _ints(xs[1])
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@register("Flatten")
def _flatten(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    axis = node.attr("axis", 1) % (x.dim() + 1) if x.dim() else 0
    rows = 1
    for d in x.shape[:axis]:
        rows *= d
    return x.reshape(rows, -1)


@register("Transpose")
def _transpose(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    perm = node.attr("perm") or list(range(x.dim()))[::-1]
    return x.permute(*perm)


@register("Concat")
def _concat(xs: Inputs, node: NodeInfo) -> Tensor:
    parts = [x for x in xs if x is not None and (x.numel() or x.dim() > 1)]
    if not parts:
        return xs[0]
    dtype = parts[0].dtype
    return torch.cat([p.to(dtype) for p in parts], dim=node.attr("axis"))


@register("Split")
def _split(xs: Inputs, node: NodeInfo) -> OpOutput:
    x, axis = xs[0], node.attr("axis", 0)
    sizes = _ints(xs[1]) if node.opset >= 13 and len(xs) > 1 and xs[1] is not None else node.attr("split")
    if not sizes:
        n = node.attr("num_outputs", node.n_outputs)
        chunk = -(-x.shape[axis] // n)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(n)]
    return list(torch.split(x, list(sizes), dim=axis))


@register("Slice")
def _slice(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = _ints(xs[1]), _ints(xs[2])
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else None
        steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else None
    axes = axes if axes else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        size = x.shape[axis]
        if step > 0:
            start = max(0, min(size, start + size if start < 0 else start))
            end = max(0, min(size, end + size if end < 0 else end))
            x = x.narrow(axis, start, max(0, end - start))[_every(x.dim(), axis, step)]
        else:
            start = max(-1, min(size - 1, start + size if start < 0 else start))
            end = max(-1, min(size - 1, end + size if end < 0 else end))
            index = torch.arange(start, end, step, dtype=torch.int64)
            x = x.index_select(axis, index)
    return x


def _every(rank: int, axis: int, step: int) -> tuple[slice, ...]:
    return tuple(slice(None, None, step) if i == axis else slice(None) for i in range(rank))


@register("Gather")
def _gather(xs: Inputs, node: NodeInfo) -> Tensor:
    data, indices = xs[0], xs[1].long()
    axis = node.attr("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    flat = data.index_select(axis, indices.reshape(-1))
    shape = list(data.shape[:axis]) + list(indices.shape) + list(data.shape[axis + 1 :])
    return flat.reshape(shape)


@register("GatherElements")
def _gather_elements(xs: Inputs, node: NodeInfo) -> Tensor:
    data, indices = xs[0], xs[1].long()
    axis = node.attr("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    return torch.gather(data, axis, indices)


@register("Squeeze")
def _squeeze(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    axes = _ints(xs[1]) if node.opset >= 13 and len(xs) > 1 else node.attr("axes")
    if not axes:
        return x.squeeze()
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


@register("Unsqueeze")
def _unsqueeze(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    axes = _ints(xs[1]) if node.opset >= 13 else node.attr("axes")
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


@register("Expand")
def _expand(xs: Inputs, node: NodeInfo) -> Tensor:
    x, shape = xs[0], _ints(xs[1])
    return x * torch.ones(shape, dtype=x.dtype) if x.dtype != torch.bool else x & torch.ones(shape, dtype=torch.bool)


@register("Tile")
def _tile(xs: Inputs, node: NodeInfo) -> Tensor:
    return xs[0].repeat(*_ints(xs[1]))


@register("ConstantOfShape")
def _constant_of_shape(xs: Inputs, node: NodeInfo) -> Tensor:
    value = node.attr("value")
    fill = value.reshape(-1)[0] if value is not None else torch.tensor(0.0)
    return torch.full(_ints(xs[0]), fill.item(), dtype=fill.dtype)


@register("Range")
def _range(xs: Inputs, node: NodeInfo) -> Tensor:
    start, limit, delta = (x.reshape(()) for x in xs[:3])
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@register("Trilu")
def _trilu(xs: Inputs, node: NodeInfo) -> Tensor:
    k = int(xs[1].reshape(())) if len(xs) > 1 and xs[1] is not None else 0
    return torch.triu(xs[0], k) if node.attr("upper", 1) else torch.tril(xs[0], k)


@register("DepthToSpace")
def _depth_to_space(xs: Inputs, node: NodeInfo) -> Tensor:
    x, block = xs[0], node.attr("blocksize")
    if node.attr("mode", "DCR") == "CRD":
        return F.pixel_shuffle(x, block)
    n, c, h, w = x.shape
    y = x.reshape(n, block, block, c // (block * block), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (block * block), h * block, w * block)


@register("SpaceToDepth")
def _space_to_depth(xs: Inputs, node: NodeInfo) -> Tensor:
    x, block = xs[0], node.attr("blocksize")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // block, block, w // block, block).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * block * block, h // block, w // block)


@register("Pad")
def _pad(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    mode = node.attr("mode", "constant")
    if node.opset < 11:
        pads, value, axes = node.attr("pads"), node.attr("value", 0.0), None
    else:
        pads = _ints(xs[1])
        value = xs[2].reshape(-1)[0].item() if len(xs) > 2 and xs[2] is not None and xs[2].numel() else 0.0
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else None
    rank = x.dim()
    axes = [a % rank for a in axes] if axes else list(range(rank))
    half = len(axes)
    before = dict(zip(axes, pads[:half], strict=True))
    after = dict(zip(axes, pads[half:], strict=True))
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):  # F.pad lists the last axis first
        torch_pads += [before.get(axis, 0), after.get(axis, 0)]
    if mode == "constant":
        return F.pad(x, torch_pads, mode="constant", value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    while torch_pads and torch_pads[-2:] == [0, 0]:  # torch pads only trailing axes in these modes
        torch_pads = torch_pads[:-2]
    if len(torch_pads) // 2 >= rank:
        raise ValueError(f"Pad node {node.name!r}: {mode} padding of every axis is not supported")
    squeeze = rank - len(torch_pads) // 2 < 2  # torch wants a leading batch/channel axis
    y = F.pad(x.unsqueeze(0) if squeeze else x, torch_pads, mode=torch_mode)
    return y.squeeze(0) if squeeze else y


@register("Resize", "Upsample")
def _resize(xs: Inputs, node: NodeInfo) -> Tensor:
    """Nearest (floor / round_prefer_floor, asymmetric) and linear (half_pixel / align_corners) 2-D resizes."""
    x = xs[0]
    if node.op_type == "Upsample":
        scales = node.attr("scales") or _floats(xs[1])
        sizes = None
    else:
        scales = _floats(xs[2]) if len(xs) > 2 and xs[2] is not None and xs[2].numel() else None
        sizes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None and xs[3].numel() else None
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    out_size = sizes[2:] if sizes else [int(d * s) for d, s in zip(x.shape[2:], scales[2:], strict=True)]
    if mode == "nearest":
        if transform == "asymmetric" and node.attr("nearest_mode", "round_prefer_floor") == "floor":
            return F.interpolate(x, size=out_size, mode="nearest")
        if node.op_type == "Upsample" or transform == "asymmetric":
            return F.interpolate(x, size=out_size, mode="nearest")
        return F.interpolate(x, size=out_size, mode="nearest-exact")
    torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
    if mode not in ("linear", "bilinear") or transform not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        raise ValueError(f"Resize node {node.name!r}: mode {mode!r} with {transform!r} coordinates is not supported")
    return F.interpolate(x, size=out_size, mode=torch_mode, align_corners=transform == "align_corners")


def _floats(x: Tensor | None) -> list[float]:
    return [] if x is None else [float(v) for v in x.reshape(-1).tolist()]


@register("TopK")
def _topk(xs: Inputs, node: NodeInfo) -> OpOutput:
    k = int(xs[1].reshape(-1)[0]) if node.opset >= 10 else node.attr("k")
    values, indices = torch.topk(
        xs[0], k, dim=node.attr("axis", -1), largest=bool(node.attr("largest", 1)), sorted=True
    )
    return [values, indices]


@register("NonZero")
def _nonzero(xs: Inputs, node: NodeInfo) -> Tensor:
    return torch.nonzero(xs[0]).t().contiguous()


@register("ScatterElements")
def _scatter_elements(xs: Inputs, node: NodeInfo) -> Tensor:
    data, indices, updates = xs[0], xs[1].long(), xs[2]
    axis = node.attr("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    reduction = node.attr("reduction", "none")
    if reduction == "none":
        return torch.scatter(data, axis, indices, updates)
    torch_reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return torch.scatter_reduce(data, axis, indices, updates, reduce=torch_reduce)


@register("ScatterND")
def _scatter_nd(xs: Inputs, node: NodeInfo) -> Tensor:
    data, indices, updates = xs[0], xs[1].long(), xs[2]
    if node.attr("reduction", "none") != "none":
        raise ValueError(f"ScatterND node {node.name!r}: only reduction='none' is supported")
    depth = indices.shape[-1]
    flat_index = indices.reshape(-1, depth)
    out = data.clone()
    out[tuple(flat_index.t())] = updates.reshape(-1, *data.shape[depth:])
    return out


@register("ReverseSequence")
def _reverse_sequence(xs: Inputs, node: NodeInfo) -> Tensor:
    """Per batch entry b, reverse the first lens[b] steps along the time axis (a gather, so gradients flow)."""
    x, lens = xs[0], xs[1].long()
    time_axis, batch_axis = node.attr("time_axis", 0), node.attr("batch_axis", 1)
    steps = x.shape[time_axis]
    t = torch.arange(steps, dtype=torch.int64).unsqueeze(1)  # [T, 1]
    index = torch.where(t < lens.unsqueeze(0), lens.unsqueeze(0) - 1 - t, t)  # [T, B]
    if time_axis > batch_axis:
        index = index.t()
    shape = [1] * x.dim()
    shape[time_axis], shape[batch_axis] = steps, lens.shape[0]
    return torch.gather(x, time_axis, index.reshape(shape).expand(x.shape))


@register("OneHot")
def _one_hot(xs: Inputs, node: NodeInfo) -> Tensor:
    """values[1] where the index (negative ones wrap once) hits, values[0] elsewhere; the new axis at `axis`."""
    indices, values = xs[0].long(), xs[2]
    depth = int(xs[1].reshape(-1)[0])
    indices = torch.where(indices < 0, indices + depth, indices)
    valid = (indices >= 0) & (indices < depth)
    hot = F.one_hot(indices.clamp(0, depth - 1), depth).bool() & valid.unsqueeze(-1)
    out = torch.where(hot, values[1], values[0])
    return out.movedim(-1, node.attr("axis", -1) % out.dim())
