"""One pre-norm transformer encoder block on a synthetic sequence task, written with primitive ops.

Attention is spelled out as MatMul/Reshape/Transpose/Softmax and GELU as its Erf decomposition (opset
17 has no fused ops for either), which is the shape real exported transformers have and what the
compression passes must recognise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto
from torch import nn

from model_zoo import layers
from model_zoo.builder import train_and_export
from model_zoo.cache import load_or_build
from model_zoo.devmodel import BuiltModel, DevModel
from model_zoo.onnx_graph import GraphBuilder, float_output, tensor_input, to_numpy
from model_zoo.sequence_task import NUM_CLASSES, SEQ_LEN, VOCAB, make_sequence_split
from model_zoo.training import TrainConfig

NAME = "transformer_block"
VERSION = 1
INPUT = "tokens"
OUTPUT = "logits"
D_MODEL = 64
HEADS = 4
HEAD_DIM = D_MODEL // HEADS
HIDDEN = 128
TRAIN = TrainConfig(epochs=12, batch_size=64, lr=3e-3, weight_decay=1e-2)


class TransformerBlock(nn.Module):
    """Embeddings, x + MHSA(LN(x)), x + MLP(LN(x)), mean over sequence, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Parameter(0.02 * torch.randn(SEQ_LEN, D_MODEL))
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.q = nn.Linear(D_MODEL, D_MODEL)
        self.k = nn.Linear(D_MODEL, D_MODEL)
        self.v = nn.Linear(D_MODEL, D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.fc1 = nn.Linear(D_MODEL, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, D_MODEL)
        self.head = nn.Linear(D_MODEL, NUM_CLASSES)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], SEQ_LEN, HEADS, HEAD_DIM).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos
        h = self.ln1(x)
        q, k, v = self._heads(self.q(h)), self._heads(self.k(h)), self._heads(self.v(h))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM), dim=-1)
        mixed = (attn @ v).transpose(1, 2).reshape(x.shape[0], SEQ_LEN, D_MODEL)
        x = x + self.proj(mixed)
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(dim=1))


def _attention(b: GraphBuilder, net: TransformerBlock, h: str) -> str:
    """Multi-head self-attention as primitive ops: [B,T,D] -> [B,T,D]."""
    split_shape = b.const("attn.split_shape", np.array([0, 0, HEADS, HEAD_DIM], dtype=np.int64))
    merge_shape = b.const("attn.merge_shape", np.array([0, 0, D_MODEL], dtype=np.int64))

    def heads(name: str, linear: nn.Linear, perm: list[int]) -> str:
        y = b.op("Reshape", [layers.matmul_add(b, name, linear, h), split_shape], name=f"{name}/Reshape")
        return b.op("Transpose", [y], name=f"{name}/Transpose", perm=perm)

    q = heads("q", net.q, [0, 2, 1, 3])  # [B,H,T,dh]
    k_t = heads("k", net.k, [0, 2, 3, 1])  # [B,H,dh,T]
    v = heads("v", net.v, [0, 2, 1, 3])
    scores = b.op("MatMul", [q, k_t], name="attn/scores")
    scale = b.const("attn.scale", np.array(math.sqrt(HEAD_DIM), dtype=np.float32))
    probs = b.op("Softmax", [b.op("Div", [scores, scale], name="attn/scale")], name="attn/softmax", axis=-1)
    mixed = b.op("MatMul", [probs, v], name="attn/mix")
    mixed = b.op("Transpose", [mixed], name="attn/merge_transpose", perm=[0, 2, 1, 3])
    mixed = b.op("Reshape", [mixed, merge_shape], name="attn/merge_reshape")
    return layers.matmul_add(b, "proj", net.proj, mixed)


def _gelu(b: GraphBuilder, name: str, x: str) -> str:
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))), as Div, Erf, Add, Mul, Mul."""
    sqrt2 = b.const(f"{name}.sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    one = b.const(f"{name}.one", np.array(1.0, dtype=np.float32))
    half = b.const(f"{name}.half", np.array(0.5, dtype=np.float32))
    erf = b.op("Erf", [b.op("Div", [x, sqrt2], name=f"{name}/Div")], name=f"{name}/Erf")
    y = b.op("Mul", [x, b.op("Add", [erf, one], name=f"{name}/Add")], name=f"{name}/Mul")
    return b.op("Mul", [y, half], name=f"{name}/Mul_half")


def to_onnx(net: TransformerBlock) -> onnx.ModelProto:
    """Mirror TransformerBlock node by node."""
    b = GraphBuilder(NAME)
    x = b.op("Gather", [b.const("tok.weight", to_numpy(net.tok.weight)), INPUT], name="tok", axis=0)
    x = b.op("Add", [x, b.const("pos", to_numpy(net.pos))], name="pos_add")
    x = b.op("Add", [x, _attention(b, net, layers.layer_norm(b, "ln1", net.ln1, x))], name="attn_residual")
    h = _gelu(b, "gelu", layers.matmul_add(b, "fc1", net.fc1, layers.layer_norm(b, "ln2", net.ln2, x)))
    x = b.op("Add", [x, layers.matmul_add(b, "fc2", net.fc2, h)], name="mlp_residual")
    x = b.op("ReduceMean", [x], name="seq_mean", axes=[1], keepdims=0)
    layers.matmul_add(b, "head", net.head, x, output=OUTPUT)
    inputs = [tensor_input(INPUT, TensorProto.INT64, [SEQ_LEN])]
    return b.build(inputs, [float_output(OUTPUT, [NUM_CLASSES])])


def build(seed: int = 0) -> BuiltModel:
    """Train and export without touching the cache."""
    s = make_sequence_split()
    data = (s.x_train, s.y_train, s.x_test, s.y_test)
    return train_and_export(TransformerBlock, to_onnx, data, TRAIN, seed, INPUT)


def load(seed: int = 0, root: Path | None = None) -> DevModel:
    """The cached transformer block, built on first use."""
    return load_or_build(NAME, VERSION, seed, lambda: build(seed), root)
