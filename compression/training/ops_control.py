"""If, Loop and Scan: their bodies (compiled by `compiled_graph`) run eagerly with the same torch ops.

Gradients flow through the branch taken and through every iteration, into the weights the bodies read.
Loops whose trip count depends on data run as Python loops; any Loop or Scan that would run more than
`NodeInfo.max_loop_iterations` iterations stops with a `CompressionError` (distill_max_loop_iterations).
"""

from __future__ import annotations

import torch

from compression.errors import CompressionError
from compression.training.compiled_graph import CompiledGraph
from compression.training.op_registry import Inputs, NodeInfo, OpOutput, Tensor, register


class LoopLimitError(CompressionError):
    """A Loop or Scan would run more iterations than distill_max_loop_iterations allows."""


def _check_iterations(node: NodeInfo, iteration: int) -> None:
    """Called before running iteration `iteration` (0-based), or with a known total before starting."""
    if iteration >= node.max_loop_iterations:
        raise LoopLimitError(
            f"{node.op_type} node {node.name!r} runs more than {node.max_loop_iterations} iterations, the limit "
            "set by distill_max_loop_iterations: raise the setting or train on shorter inputs"
        )


def _truth(x: Tensor, node: NodeInfo, what: str) -> bool:
    if x.numel() != 1:
        raise ValueError(f"{node.op_type} node {node.name!r}: {what} has {x.numel()} elements, expected one")
    return bool(x.reshape(()))


@register("If")
def _if(xs: Inputs, node: NodeInfo) -> OpOutput:
    own, scope = node.split_captured(xs)
    branch: CompiledGraph = node.attr("then_branch" if _truth(own[0], node, "the condition") else "else_branch")
    return branch.run_body(scope, [], node.training)


def _stack(parts: list[Tensor], body: CompiledGraph, index: int) -> Tensor:
    """Per-iteration values stacked on a new leading axis; no iterations give [0, *declared shape] (as onnxruntime)."""
    if parts:
        return torch.stack(parts, dim=0)
    return torch.zeros([0, *(body.output_shapes[index] or [])], dtype=body.output_dtypes[index])


@register("Loop")
def _loop(xs: Inputs, node: NodeInfo) -> OpOutput:
    """ONNX Loop: runs while iteration < M (if given) and cond (the body's first output updates cond)."""
    own, scope = node.split_captured(xs)
    body: CompiledGraph = node.attr("body")
    trip = own[0] if own and own[0] is not None else None
    cond = own[1] if len(own) > 1 and own[1] is not None else None
    carried = [x for x in own[2:]]
    if any(x is None for x in carried):
        raise ValueError(f"Loop node {node.name!r}: omitted loop-carried inputs are not supported")
    max_trips = None if trip is None else int(trip.reshape(-1)[0])
    keep_going = True if cond is None else _truth(cond, node, "the initial condition")
    if cond is None and max_trips is not None and max_trips > 0:
        _check_iterations(node, max_trips - 1)  # a plain for loop: refuse before running any iteration
    cond_in = torch.tensor(keep_going)
    n_scans = len(body.output_names) - 1 - len(carried)
    scans: list[list[Tensor]] = [[] for _ in range(n_scans)]
    iteration = 0
    while keep_going and (max_trips is None or iteration < max_trips):
        _check_iterations(node, iteration)
        outs = body.run_body(scope, [torch.tensor(iteration, dtype=torch.int64), cond_in, *carried], node.training)
        cond_in = outs[0]
        keep_going = _truth(cond_in, node, "the body's condition output")
        carried = outs[1 : 1 + len(carried)]
        for parts, value in zip(scans, outs[1 + len(carried) :], strict=True):
            parts.append(value)
        iteration += 1
    first = 1 + len(carried)
    return [*carried, *(_stack(parts, body, first + k) for k, parts in enumerate(scans))]


@register("Scan")
def _scan(xs: Inputs, node: NodeInfo) -> OpOutput:
    """ONNX Scan (opset 9+): per step one slice of each scan input along its axis, state carried across steps."""
    if node.opset < 9:
        raise ValueError(f"Scan node {node.name!r}: opset {node.opset} Scan (with sequence_lens) is not supported")
    own, scope = node.split_captured(xs)
    body: CompiledGraph = node.attr("body")
    n_scan_in = node.attr("num_scan_inputs")
    states, sequences = list(own[: len(own) - n_scan_in]), list(own[len(own) - n_scan_in :])
    in_axes = node.attr("scan_input_axes") or [0] * n_scan_in
    in_backward = node.attr("scan_input_directions") or [0] * n_scan_in
    sequences = [x.movedim(axis % x.dim(), 0) for x, axis in zip(sequences, in_axes, strict=True)]
    steps = sequences[0].shape[0]
    n_scan_out = len(body.output_names) - len(states)
    out_axes = node.attr("scan_output_axes") or [0] * n_scan_out
    out_backward = node.attr("scan_output_directions") or [0] * n_scan_out
    scans: list[list[Tensor]] = [[] for _ in range(n_scan_out)]
    if steps:
        _check_iterations(node, steps - 1)  # the step count is known: refuse before running any
    for t in range(steps):
        slices = [x[steps - 1 - t] if back else x[t] for x, back in zip(sequences, in_backward, strict=True)]
        outs = body.run_body(scope, [*states, *slices], node.training)
        states = outs[: len(states)]
        for parts, value in zip(scans, outs[len(states) :], strict=True):
            parts.append(value)
    results = list(states)
    for k, (parts, axis, back) in enumerate(zip(scans, out_axes, out_backward, strict=True)):
        stacked = _stack(parts[::-1] if back else parts, body, len(states) + k)
        results.append(stacked.movedim(0, axis % stacked.dim()))
    return results
