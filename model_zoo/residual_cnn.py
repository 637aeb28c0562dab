"""ResNet-style CNN on 8x8 digits with real BatchNormalization nodes and identity skip Adds.

Residual Adds tie channel counts across layers and the BN nodes carry per-channel statistics, the two
things a structured-pruning pass has to keep consistent; so BN is deliberately not folded into Conv.
"""

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

NAME = "residual_cnn"
VERSION = 1
INPUT = "input"
OUTPUT = "logits"
WIDTH = 32
TRAIN = TrainConfig(epochs=12, batch_size=32, lr=3e-3, weight_decay=1e-4)


def conv_bn(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3x3 Conv (no bias, BN provides it) followed by BatchNorm2d."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=False), nn.BatchNorm2d(out_ch))


class ResidualBlock(nn.Module):
    """Conv-BN-Relu-Conv-BN, identity Add, Relu."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = conv_bn(width, width)
        self.b = conv_bn(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(torch.relu(self.a(x))))


class ResidualCNN(nn.Module):
    """Stem, two residual blocks, strided downsample, global average pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, WIDTH)
        self.block1 = ResidualBlock(WIDTH)
        self.block2 = ResidualBlock(WIDTH)
        self.down = conv_bn(WIDTH, 2 * WIDTH, stride=2)
        self.fc = nn.Linear(2 * WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.block2(self.block1(x))
        x = torch.relu(self.down(x))
        return self.fc(torch.flatten(x.mean(dim=(2, 3), keepdim=True), 1))


def _conv_bn(b: GraphBuilder, name: str, m: nn.Sequential, x: str) -> str:
    return layers.batch_norm(b, f"{name}.1", m[1], layers.conv(b, f"{name}.0", m[0], x))


def _block(b: GraphBuilder, name: str, m: ResidualBlock, x: str) -> str:
    y = layers.relu(b, f"{name}.relu_a", _conv_bn(b, f"{name}.a", m.a, x))
    y = _conv_bn(b, f"{name}.b", m.b, y)
    return layers.relu(b, f"{name}.relu_out", b.op("Add", [x, y], name=f"{name}.add"))


def to_onnx(net: ResidualCNN) -> onnx.ModelProto:
    """Mirror ResidualCNN node by node; initializer names match its state_dict keys."""
    b = GraphBuilder(NAME)
    x = layers.relu(b, "stem.relu", _conv_bn(b, "stem", net.stem, INPUT))
    x = _block(b, "block1", net.block1, x)
    x = _block(b, "block2", net.block2, x)
    x = layers.relu(b, "down.relu", _conv_bn(b, "down", net.down, x))
    x = b.op("GlobalAveragePool", [x], name="gap")
    x = b.op("Flatten", [x], name="flatten", axis=1)
    layers.gemm(b, "fc", net.fc, x, output=OUTPUT)
    return b.build([tensor_input(INPUT, TensorProto.FLOAT, [1, 8, 8])], [float_output(OUTPUT, [10])])


def build(seed: int = 0) -> BuiltModel:
    """Train and export without touching the cache."""
    d = load_digits_split()
    data = (d.x_train, d.y_train, d.x_test, d.y_test)
    return train_and_export(ResidualCNN, to_onnx, data, TRAIN, seed, INPUT)


def load(seed: int = 0, root: Path | None = None) -> DevModel:
    """The cached residual CNN, built on first use."""
    return load_or_build(NAME, VERSION, seed, lambda: build(seed), root)
