"""ONNX LSTM and GRU (default activations, any direction) unrolled over time with torch ops."""

from __future__ import annotations

import torch

from compression.training.op_registry import Inputs, NodeInfo, OpOutput, Tensor, register

DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _check(node: NodeInfo, xs: Inputs, seq_len: int) -> None:
    activations = node.attr("activations")
    n = len(DEFAULT_ACTIVATIONS[node.op_type])
    if activations and [a for a in activations[:n]] != DEFAULT_ACTIVATIONS[node.op_type]:
        raise ValueError(f"{node.op_type} node {node.name!r}: only the default activations are supported")
    if node.attr("clip") is not None:
        raise ValueError(f"{node.op_type} node {node.name!r}: the clip attribute is not supported")
    lens = xs[4] if len(xs) > 4 else None
    if lens is not None and bool((lens != seq_len).any()):
        raise ValueError(f"{node.op_type} node {node.name!r}: sequence_lens shorter than the sequence")


def _directions(node: NodeInfo) -> list[bool]:
    """One entry per direction: True runs the sequence backwards."""
    direction = node.attr("direction", "forward")
    return {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]


def _time_major(x: Tensor, node: NodeInfo) -> Tensor:
    return x.transpose(0, 1) if node.attr("layout", 0) else x


def _outputs(ys: list[Tensor], finals: list[list[Tensor]], node: NodeInfo) -> list[Tensor]:
    y = torch.stack(ys, dim=1)  # [T, D, B, H]
    states = [torch.stack(f, dim=0) for f in finals]  # [D, B, H]
    if node.attr("layout", 0):
        y = y.permute(2, 0, 1, 3)
        states = [s.transpose(0, 1) for s in states]
    return [y, *states][: node.n_outputs]


@register("LSTM")
def _lstm(xs: Inputs, node: NodeInfo) -> OpOutput:
    x = _time_major(xs[0], node)
    w, r = xs[1], xs[2]
    b = xs[3] if len(xs) > 3 else None
    seq_len, batch = x.shape[0], x.shape[1]
    _check(node, xs, seq_len)
    hidden = r.shape[-1]
    h0 = xs[5] if len(xs) > 5 else None
    c0 = xs[6] if len(xs) > 6 else None
    peep = xs[7] if len(xs) > 7 else None
    if h0 is not None and node.attr("layout", 0):
        h0 = h0.transpose(0, 1)
    if c0 is not None and node.attr("layout", 0):
        c0 = c0.transpose(0, 1)
    ys, final_h, final_c = [], [], []
    for d, backwards in enumerate(_directions(node)):
        bias = 0 if b is None else b[d, : 4 * hidden] + b[d, 4 * hidden :]
        pi, po, pf = (None, None, None) if peep is None else peep[d].split(hidden)
        h = x.new_zeros(batch, hidden) if h0 is None else h0[d]
        c = x.new_zeros(batch, hidden) if c0 is None else c0[d]
        projected = torch.matmul(x, w[d].t()) + bias  # [T, B, 4H]
        steps: list[Tensor] = [x.new_empty(0)] * seq_len
        for t in reversed(range(seq_len)) if backwards else range(seq_len):
            gates = projected[t] + h @ r[d].t()
            i, o, f, g = gates.split(hidden, dim=-1)
            if pi is not None:
                i, f = i + pi * c, f + pf * c
            i, f, g = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
            if node.attr("input_forget", 0):
                f = 1 - i
            c = f * c + i * g
            if po is not None:
                o = o + po * c
            h = torch.sigmoid(o) * torch.tanh(c)
            steps[t] = h
        ys.append(torch.stack(steps, dim=0))
        final_h.append(h)
        final_c.append(c)
    return _outputs(ys, [final_h, final_c], node)


@register("GRU")
def _gru(xs: Inputs, node: NodeInfo) -> OpOutput:
    x = _time_major(xs[0], node)
    w, r = xs[1], xs[2]
    b = xs[3] if len(xs) > 3 else None
    seq_len, batch = x.shape[0], x.shape[1]
    _check(node, xs, seq_len)
    hidden = r.shape[-1]
    h0 = xs[5] if len(xs) > 5 else None
    if h0 is not None and node.attr("layout", 0):
        h0 = h0.transpose(0, 1)
    linear_before_reset = bool(node.attr("linear_before_reset", 0))
    ys, final_h = [], []
    for d, backwards in enumerate(_directions(node)):
        wb = 0 if b is None else b[d, : 3 * hidden]
        rb = x.new_zeros(3 * hidden) if b is None else b[d, 3 * hidden :]
        rz, rr, rh = r[d].split(hidden, dim=0)
        rbz, rbr, rbh = rb.split(hidden)
        h = x.new_zeros(batch, hidden) if h0 is None else h0[d]
        projected = torch.matmul(x, w[d].t()) + wb  # [T, B, 3H]
        steps: list[Tensor] = [x.new_empty(0)] * seq_len
        for t in reversed(range(seq_len)) if backwards else range(seq_len):
            xz, xr, xh = projected[t].split(hidden, dim=-1)
            z = torch.sigmoid(xz + h @ rz.t() + rbz)
            reset = torch.sigmoid(xr + h @ rr.t() + rbr)
            if linear_before_reset:
                candidate = torch.tanh(xh + reset * (h @ rh.t() + rbh))
            else:
                candidate = torch.tanh(xh + (reset * h) @ rh.t() + rbh)
            h = (1 - z) * candidate + z * h
            steps[t] = h
        ys.append(torch.stack(steps, dim=0))
        final_h.append(h)
    return _outputs(ys, [final_h], node)
