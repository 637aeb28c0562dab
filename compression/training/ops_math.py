"""Elementwise arithmetic, activations, reductions and matrix products as torch ops (ONNX semantics)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx import TensorProto

from compression.training.op_registry import Inputs, NodeInfo, OpOutput, Tensor, register

TORCH_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
    TensorProto.UINT16: torch.int64,
    TensorProto.UINT32: torch.int64,
    TensorProto.UINT64: torch.int64,
}


def _binary(fn):  # noqa: ANN001, ANN202
    return lambda xs, node: fn(xs[0], xs[1])


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _mod(xs: Inputs, node: NodeInfo) -> Tensor:
    if node.attr("fmod", 0):
        return torch.fmod(xs[0], xs[1])
    return torch.remainder(xs[0], xs[1])


def _pow(xs: Inputs, node: NodeInfo) -> Tensor:
    base, exponent = xs[0], xs[1]
    if exponent.numel() == 1 and base.is_floating_point():
        value = float(exponent.reshape(()))
        if value == 2.0:
            return base * base
        return torch.pow(base, value)
    return torch.pow(base, exponent.to(base.dtype))


register("Add")(_binary(torch.add))
register("Sub")(_binary(torch.sub))
register("Mul")(_binary(torch.mul))
register("Div")(_binary(_div))
register("Mod")(_mod)
register("Pow")(_pow)
register("Equal")(_binary(torch.eq))
register("Less")(_binary(torch.lt))
register("LessOrEqual")(_binary(torch.le))
register("Greater")(_binary(torch.gt))
register("GreaterOrEqual")(_binary(torch.ge))
register("And")(_binary(torch.logical_and))
register("Or")(_binary(torch.logical_or))
register("Xor")(_binary(torch.logical_xor))
register("BitShift")(
    lambda xs, node: (
        torch.bitwise_left_shift(xs[0], xs[1])
        if node.attr("direction") == "LEFT"
        else torch.bitwise_right_shift(xs[0], xs[1])
    )
)

_UNARY = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Atan": torch.atan,
    "Softsign": F.softsign,
    "Not": torch.logical_not,
    "Identity": lambda x: x,
    "IsNaN": torch.isnan,
}
for _op, _fn in _UNARY.items():
    register(_op)(lambda xs, node, fn=_fn: fn(xs[0]))


@register("Dropout")
def _dropout(xs: Inputs, node: NodeInfo) -> OpOutput:
    """Identity in inference and in training: the student keeps its exported behaviour (see docs)."""
    x = xs[0]
    if node.n_outputs > 1:
        return [x, torch.ones_like(x, dtype=torch.bool)]
    return x


@register("LeakyRelu")
def _leaky_relu(xs: Inputs, node: NodeInfo) -> Tensor:
    return F.leaky_relu(xs[0], node.attr("alpha", 0.01))


@register("Elu")
def _elu(xs: Inputs, node: NodeInfo) -> Tensor:
    return F.elu(xs[0], node.attr("alpha", 1.0))


@register("Celu")
def _celu(xs: Inputs, node: NodeInfo) -> Tensor:
    return F.celu(xs[0], node.attr("alpha", 1.0))


@register("Selu")
def _selu(xs: Inputs, node: NodeInfo) -> Tensor:
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    x = xs[0]
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@register("Softplus")
def _softplus(xs: Inputs, node: NodeInfo) -> Tensor:
    return F.softplus(xs[0])


@register("PRelu")
def _prelu(xs: Inputs, node: NodeInfo) -> Tensor:
    x, slope = xs[0], xs[1]
    return torch.where(x >= 0, x, x * slope)


@register("HardSigmoid")
def _hard_sigmoid(xs: Inputs, node: NodeInfo) -> Tensor:
    return torch.clamp(node.attr("alpha", 0.2) * xs[0] + node.attr("beta", 0.5), 0.0, 1.0)


@register("HardSwish")
def _hard_swish(xs: Inputs, node: NodeInfo) -> Tensor:
    return F.hardswish(xs[0])


@register("Mish")
def _mish(xs: Inputs, node: NodeInfo) -> Tensor:
    return F.mish(xs[0])


@register("Gelu")
def _gelu(xs: Inputs, node: NodeInfo) -> Tensor:
    return F.gelu(xs[0], approximate=node.attr("approximate", "none"))


@register("ThresholdedRelu")
def _thresholded_relu(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    return torch.where(x > node.attr("alpha", 1.0), x, torch.zeros_like(x))


@register("Clip")
def _clip(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        low = xs[1] if len(xs) > 1 and xs[1] is not None else None
        high = xs[2] if len(xs) > 2 and xs[2] is not None else None
        low = None if low is None else low.to(x.dtype)
        high = None if high is None else high.to(x.dtype)
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return x


@register("Where")
def _where(xs: Inputs, node: NodeInfo) -> Tensor:
    return torch.where(xs[0].bool(), xs[1], xs[2])


def _variadic(fn):  # noqa: ANN001, ANN202
    def run(xs: Inputs, node: NodeInfo) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return run


register("Sum")(_variadic(torch.add))
register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))
register("Mean")(lambda xs, node: _variadic(torch.add)(xs, node) / len(xs))


@register("Cast")
def _cast(xs: Inputs, node: NodeInfo) -> Tensor:
    return xs[0].to(TORCH_DTYPES[node.attr("to")])


@register("CastLike")
def _cast_like(xs: Inputs, node: NodeInfo) -> Tensor:
    return xs[0].to(xs[1].dtype)


@register("MatMul")
def _matmul(xs: Inputs, node: NodeInfo) -> Tensor:
    return torch.matmul(xs[0], xs[1])


@register("Gemm")
def _gemm(xs: Inputs, node: NodeInfo) -> Tensor:
    a, b = xs[0], xs[1]
    if node.attr("transA", 0):
        a = a.t()
    if node.attr("transB", 0):
        b = b.t()
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    y = torch.matmul(a, b)
    if alpha != 1.0:
        y = y * alpha
    if len(xs) > 2 and xs[2] is not None:
        y = y + (xs[2] * beta if beta != 1.0 else xs[2])
    return y


@register("Einsum")
def _einsum(xs: Inputs, node: NodeInfo) -> Tensor:
    return torch.einsum(node.attr("equation"), *xs)


def reduce_axes(xs: Inputs, node: NodeInfo, rank: int) -> list[int] | None:
    """Axes of a Reduce op: an attribute before opset 18 (13 for ReduceSum), an input after; None means all."""
    axes_from_input = node.opset >= (13 if node.op_type == "ReduceSum" else 18)
    if axes_from_input:
        axes = xs[1].tolist() if len(xs) > 1 and xs[1] is not None and xs[1].numel() else None
    else:
        axes = node.attr("axes")
    if axes is None:
        if node.attr("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return [a % rank if rank else 0 for a in axes]


def _reduction(kind: str):  # noqa: ANN202
    def run(xs: Inputs, node: NodeInfo) -> Tensor:
        x = xs[0]
        axes = reduce_axes(xs, node, x.dim())
        if axes == [] or x.dim() == 0:
            return x
        keep = bool(node.attr("keepdims", 1))
        if kind == "mean":
            return x.mean(dim=axes, keepdim=keep)
        if kind == "sum":
            return x.sum(dim=axes, keepdim=keep)
        if kind == "sumsquare":
            return (x * x).sum(dim=axes, keepdim=keep)
        if kind == "l2":
            return torch.sqrt((x * x).sum(dim=axes, keepdim=keep))
        if kind == "l1":
            return x.abs().sum(dim=axes, keepdim=keep)
        if kind == "logsumexp":
            return torch.logsumexp(x, dim=axes, keepdim=keep)
        if kind == "prod":
            for axis in sorted(axes, reverse=True):
                x = x.prod(dim=axis, keepdim=keep)
            return x
        return torch.amax(x, dim=axes, keepdim=keep) if kind == "max" else torch.amin(x, dim=axes, keepdim=keep)

    return run


for _op, _kind in {
    "ReduceMean": "mean",
    "ReduceSum": "sum",
    "ReduceMax": "max",
    "ReduceMin": "min",
    "ReduceProd": "prod",
    "ReduceL2": "l2",
    "ReduceL1": "l1",
    "ReduceSumSquare": "sumsquare",
    "ReduceLogSumExp": "logsumexp",
}.items():
    register(_op)(_reduction(_kind))


def _arg(kind: str):  # noqa: ANN202
    def run(xs: Inputs, node: NodeInfo) -> Tensor:
        x = xs[0]
        axis = node.attr("axis", 0)
        keep = bool(node.attr("keepdims", 1))
        if node.attr("select_last_index", 0):
            flipped = torch.flip(x, [axis])
            index = flipped.argmax(axis, keepdim=keep) if kind == "max" else flipped.argmin(axis, keepdim=keep)
            return x.shape[axis] - 1 - index
        return x.argmax(axis, keepdim=keep) if kind == "max" else x.argmin(axis, keepdim=keep)

    return run


register("ArgMax")(_arg("max"))
register("ArgMin")(_arg("min"))


@register("CumSum")
def _cumsum(xs: Inputs, node: NodeInfo) -> Tensor:
    x, axis = xs[0], int(xs[1].reshape(-1)[0])
    if node.attr("reverse", 0):
        x = torch.flip(x, [axis])
    y = torch.cumsum(x, axis)
    if node.attr("exclusive", 0):
        y = y - x
    return torch.flip(y, [axis]) if node.attr("reverse", 0) else y


@register("Softmax", "LogSoftmax")
def _softmax(xs: Inputs, node: NodeInfo) -> Tensor:
    x = xs[0]
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if node.opset >= 13:
        return fn(x, dim=node.attr("axis", -1))
    axis = node.attr("axis", 1) % max(x.dim(), 1)  # before 13: softmax over the flattened trailing axes
    rows = math.prod(x.shape[:axis])
    return fn(x.reshape(rows, -1), dim=1).reshape(x.shape)
