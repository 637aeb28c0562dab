"""Plain two-conv CNN on 8x8 digits: the baseline target for conv pruning and quantization."""

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

NAME = "digits_cnn"
VERSION = 1
INPUT = "input"
OUTPUT = "logits"
TRAIN = TrainConfig(epochs=15, batch_size=32, lr=3e-3)


class DigitsCNN(nn.Module):
    """Conv-Relu, Conv-Relu, MaxPool, Flatten, Gemm-Relu, Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def to_onnx(net: DigitsCNN) -> onnx.ModelProto:
    """Mirror DigitsCNN node by node."""
    b = GraphBuilder(NAME)
    x = layers.relu(b, "relu1", layers.conv(b, "conv1", net.conv1, INPUT))
    x = layers.relu(b, "relu2", layers.conv(b, "conv2", net.conv2, x))
    x = b.op("MaxPool", [x], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [x], name="flatten", axis=1)
    x = layers.relu(b, "relu3", layers.gemm(b, "fc1", net.fc1, x))
    layers.gemm(b, "fc2", net.fc2, x, output=OUTPUT)
    return b.build([tensor_input(INPUT, TensorProto.FLOAT, [1, 8, 8])], [float_output(OUTPUT, [10])])


def build(seed: int = 0) -> BuiltModel:
    """Train and export without touching the cache."""
    d = load_digits_split()
    return train_and_export(DigitsCNN, to_onnx, (d.x_train, d.y_train, d.x_test, d.y_test), TRAIN, seed, INPUT)


def load(seed: int = 0, root: Path | None = None) -> DevModel:
    """The cached digits CNN, built on first use."""
    return load_or_build(NAME, VERSION, seed, lambda: build(seed), root)
