"""QuantizeLinear / DequantizeLinear in torch, per tensor or per axis, with a straight-through gradient.

Without gradients the ops match onnxruntime exactly: QuantizeLinear returns the integer tensor
(round half to even, saturated, zero point added) and DequantizeLinear reads it back. While training
(gradients enabled and a float input that requires them), QuantizeLinear returns the integer codes as
a float tensor: rounding passes the gradient straight through, saturation stops it (the codes outside
the range do not move), and the scale receives the LSQ gradient when it is trained itself.

A DequantizeLinear marked `qat_dtype` (by compression/training/qat.py, on a weight that trains as float)
fake-quantizes its float input with its own scale and zero point: quantize to that integer type and back.
A Q/DQ node marked `qat_log_scale` reads a learned scale stored as its logarithm (qat.py): it uses exp(value).
"""

from __future__ import annotations

import onnx
import torch

from compression.errors import UnsupportedOperatorError
from compression.training.op_registry import Inputs, NodeInfo, Tensor, register
from compression.training.ops_math import TORCH_DTYPES

RANGES: dict[torch.dtype, tuple[int, int]] = {
    torch.uint8: (0, 255),
    torch.int8: (-128, 127),
    torch.int16: (-32768, 32767),
    torch.int32: (-(2**31), 2**31 - 1),
}
ONNX_RANGES: dict[int, tuple[int, int]] = {
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT32: (-(2**31), 2**31 - 1),
}


def _along(value: Tensor, rank: int, axis: int) -> Tensor:
    """A 1-D per-axis scale/zero point shaped to broadcast along `axis`; scalars stay as they are."""
    if value.ndim == 1 and value.numel() > 1:
        shape = [1] * rank
        shape[axis % rank] = value.numel()
        return value.reshape(shape)
    return value.reshape(()) if value.numel() == 1 else value


def _check_blocked(node: NodeInfo) -> None:
    if node.attr("block_size", 0):
        raise UnsupportedOperatorError(f"{node.op_type} {node.name!r}: blocked quantization is not supported")


def _code_dtype(zero_point: Tensor | None, node: NodeInfo) -> tuple[torch.dtype, tuple[int, int]]:
    if zero_point is not None:
        dtype = zero_point.dtype
        if dtype not in RANGES:
            raise UnsupportedOperatorError(f"{node.op_type} {node.name!r}: zero point type {dtype} is not supported")
        return dtype, RANGES[dtype]
    output_dtype = node.attr("output_dtype", 0)
    if output_dtype:
        if output_dtype not in ONNX_RANGES or TORCH_DTYPES[output_dtype] not in RANGES:
            raise UnsupportedOperatorError(f"{node.op_type} {node.name!r}: output type {output_dtype} not supported")
        return TORCH_DTYPES[output_dtype], ONNX_RANGES[output_dtype]
    return torch.uint8, RANGES[torch.uint8]


def _scale(scale: Tensor, node: NodeInfo) -> Tensor:
    """The node's scale; a learned one is stored as its logarithm (positive whatever the optimizer does)."""
    return torch.exp(scale) if node.attr("qat_log_scale", 0) else scale


def fake_codes(x: Tensor, scale: Tensor, zero: Tensor, low: int, high: int) -> Tensor:
    """round(x / scale) + zero, saturated, as floats; rounding is straight-through, saturation blocks the gradient."""
    scaled = x / scale
    rounded = scaled + (torch.round(scaled) - scaled).detach()
    return torch.clamp(rounded + zero, low, high)


@register("QuantizeLinear")
def quantize_linear(xs: Inputs, node: NodeInfo) -> Tensor:
    _check_blocked(node)
    x, scale = xs[0], _scale(xs[1], node)
    zero_point = xs[2] if len(xs) > 2 else None
    dtype, (low, high) = _code_dtype(zero_point, node)
    axis = node.attr("axis", 1)
    s = _along(scale.to(x.dtype), x.ndim, axis)
    z = _along(zero_point.to(x.dtype), x.ndim, axis) if zero_point is not None else torch.zeros((), dtype=x.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or s.requires_grad):
        return fake_codes(x, s, z, low, high)
    return torch.clamp(torch.round(x / s) + z, low, high).to(dtype)


@register("DequantizeLinear")
def dequantize_linear(xs: Inputs, node: NodeInfo) -> Tensor:
    _check_blocked(node)
    x, scale = xs[0], _scale(xs[1], node)
    zero_point = xs[2] if len(xs) > 2 else None
    axis = node.attr("axis", 1)
    s = _along(scale, x.ndim, axis)
    z = _along(zero_point.to(s.dtype), x.ndim, axis) if zero_point is not None else torch.zeros((), dtype=s.dtype)
    qat_dtype = node.attr("qat_dtype", 0)
    if qat_dtype:  # a float weight standing in for integers: fake-quantize it with its own scale
        low, high = ONNX_RANGES[qat_dtype]
        s = s.abs().clamp_min(1e-12)
        return (fake_codes(x.to(s.dtype), s, z, low, high) - z) * s
    return (x.to(s.dtype) - z) * s
