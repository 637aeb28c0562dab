"""Convolution, pooling and normalization ops in torch, including BatchNormalization's training mode."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compression.training.op_registry import Inputs, NodeInfo, Tensor, register

BN_MOMENTUM = 0.1  # torch convention (ONNX's 0.9): weight of the new batch in the running statistics


def _spatial_pads(node: NodeInfo, x: Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """Begin and end pads per spatial axis ([b1, b2, ..., e1, e2, ...]), resolving auto_pad."""
    n = len(kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", "VALID"):
        pads = node.attr("pads") if auto_pad == "NOTSET" else None
        return list(pads) if pads else [0] * (2 * n)
    begins, ends = [], []
    for axis in range(n):
        size = x.shape[2 + axis]
        out = math.ceil(size / strides[axis])
        total = max(0, (out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _pad_input(x: Tensor, pads: list[int], value: float = 0.0) -> tuple[Tensor, list[int]]:
    """Symmetric pads go to the torch op; asymmetric ones are applied here first."""
    n = len(pads) // 2
    begins, ends = pads[:n], pads[n:]
    if begins == ends:
        return x, begins
    torch_pads: list[int] = []
    for axis in reversed(range(n)):
        torch_pads += [begins[axis], ends[axis]]
    return F.pad(x, torch_pads, value=value), [0] * n


@register("Conv")
def _conv(xs: Inputs, node: NodeInfo) -> Tensor:
    x, weight = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    n = weight.dim() - 2
    kernel = node.attr("kernel_shape") or list(weight.shape[2:])
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    x, padding = _pad_input(x, _spatial_pads(node, x, kernel, strides, dilations))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return conv(x, weight, bias, strides, padding, dilations, node.attr("group", 1))


@register("ConvTranspose")
def _conv_transpose(xs: Inputs, node: NodeInfo) -> Tensor:
    x, weight = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    n = weight.dim() - 2
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    pads = node.attr("pads") or [0] * (2 * n)
    if node.attr("output_shape") or node.attr("auto_pad", "NOTSET") != "NOTSET" or pads[:n] != pads[n:]:
        raise ValueError(f"ConvTranspose node {node.name!r}: only explicit symmetric pads are supported")
    output_padding = node.attr("output_padding") or [0] * n
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    return conv(x, weight, bias, strides, pads[:n], output_padding, node.attr("group", 1), dilations)


def _pool_args(node: NodeInfo, x: Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    return kernel, strides, dilations, _spatial_pads(node, x, kernel, strides, dilations)


@register("MaxPool")
def _max_pool(xs: Inputs, node: NodeInfo) -> Tensor:
    if node.n_outputs > 1:
        raise ValueError(f"MaxPool node {node.name!r}: the Indices output is not supported")
    x = xs[0]
    kernel, strides, dilations, pads = _pool_args(node, x)
    x, padding = _pad_input(x, pads, value=float("-inf"))
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return pool(x, kernel, strides, padding, dilations, ceil_mode=bool(node.attr("ceil_mode", 0)))


@register("AveragePool")
def _average_pool(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    kernel, strides, _, pads = _pool_args(node, x)
    include_pad = bool(node.attr("count_include_pad", 0))
    n = len(kernel)
    if pads[:n] != pads[n:] and not include_pad:
        raise ValueError(f"AveragePool node {node.name!r}: asymmetric pads without count_include_pad")
    x, padding = _pad_input(x, pads)
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    return pool(x, kernel, strides, padding, ceil_mode=bool(node.attr("ceil_mode", 0)), count_include_pad=include_pad)


@register("GlobalAveragePool")
def _global_average_pool(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool")
def _global_max_pool(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


@register("BatchNormalization")
def _batch_norm(xs: Inputs, node: NodeInfo) -> Tensor:
    """Batch statistics (and running-statistic updates) when training with bn_train, running ones otherwise."""
    x, scale, bias, mean, var = xs[:5]
    if node.attr("training_mode", 0):
        raise ValueError(f"BatchNormalization node {node.name!r}: training_mode=1 graphs are not supported")
    eps = node.attr("epsilon", 1e-5)
    train = node.training and node.bn_train and x.shape[0] > 1
    return F.batch_norm(x, mean, var, scale, bias, training=train, momentum=BN_MOMENTUM, eps=eps)


@register("LayerNormalization")
def _layer_norm(xs: Inputs, node: NodeInfo) -> Tensor:
    x, scale = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    if node.n_outputs > 1:
        raise ValueError(f"LayerNormalization node {node.name!r}: Mean/InvStdDev outputs are not supported")
    axis = node.attr("axis", -1) % x.dim()
    eps = node.attr("epsilon", 1e-5)
    shape = list(x.shape[axis:])
    if list(scale.shape) == shape and (bias is None or list(bias.shape) == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * scale
    return y if bias is None else y + bias


@register("InstanceNormalization")
def _instance_norm(xs: Inputs, node: NodeInfo) -> Tensor:
    return F.instance_norm(xs[0], weight=xs[1], bias=xs[2], eps=node.attr("epsilon", 1e-5))


@register("LpNormalization")
def _lp_norm(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    p = node.attr("p", 2)
    norm = torch.linalg.vector_norm(x, ord=p, dim=node.attr("axis", -1), keepdim=True)
    return x / norm
