"""Three-layer MLP on flattened 8x8 digits: the simplest Gemm-only target for pruning and quantization."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx import TensorProto
from torch import nn

from model_zoo import layers
from model_zoo.builder import train_and_export
from model_zoo.cache import load_or_build
from model_zoo.devmodel import BuiltModel, DevModel
from model_zoo.digits import load_digits_split
from model_zoo.onnx_graph import GraphBuilder, float_output, tensor_input
from model_zoo.training import TrainConfig

NAME = "mlp"
VERSION = 1
INPUT = "input"
OUTPUT = "logits"
TRAIN = TrainConfig(epochs=30, batch_size=32, lr=3e-3, weight_decay=1e-4)


class MLP(nn.Module):
    """Flatten, Linear-Relu, Linear-Relu, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def to_onnx(net: MLP) -> onnx.ModelProto:
    """Mirror MLP node by node."""
    b = GraphBuilder(NAME)
    x = b.op("Flatten", [INPUT], name="flatten", axis=1)
    x = layers.relu(b, "relu1", layers.gemm(b, "fc1", net.fc1, x))
    x = layers.relu(b, "relu2", layers.gemm(b, "fc2", net.fc2, x))
    layers.gemm(b, "fc3", net.fc3, x, output=OUTPUT)
    return b.build([tensor_input(INPUT, TensorProto.FLOAT, [1, 8, 8])], [float_output(OUTPUT, [10])])


def build(seed: int = 0) -> BuiltModel:
    """Train and export without touching the cache."""
    d = load_digits_split()
    return train_and_export(MLP, to_onnx, (d.x_train, d.y_train, d.x_test, d.y_test), TRAIN, seed, INPUT)


def load(seed: int = 0, root: Path | None = None) -> DevModel:
    """The cached MLP, built on first use."""
    return load_or_build(NAME, VERSION, seed, lambda: build(seed), root)
