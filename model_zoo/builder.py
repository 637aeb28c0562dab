"""The train -> mirror to ONNX -> verify pipeline every zoo model goes through."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from torch import nn

from model_zoo.devmodel import BuiltModel
from model_zoo.runtime import accuracy, check_parity
from model_zoo.training import TrainConfig, parameter_count, single_thread, torch_logits, train_classifier


def train_and_export(
    make_net: Callable[[], nn.Module],
    to_onnx: Callable[[nn.Module], onnx.ModelProto],
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    config: TrainConfig,
    seed: int,
    input_name: str,
    output_name: str = "logits",
) -> BuiltModel:
    """Train a fresh net, mirror it to ONNX and prove onnxruntime reproduces torch on the test split.

    The net is created inside the seeded single-thread context so initial weights are reproducible.
    """
    x_train, y_train, x_test, y_test = data
    with single_thread(seed):
        net = train_classifier(make_net(), x_train, y_train, config, seed)
        expected = torch_logits(net, x_test)
        model = to_onnx(net)
    logits = check_parity(model, {input_name: x_test}, expected)
    return BuiltModel(
        model=model,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        input_name=input_name,
        output_name=output_name,
        accuracy=accuracy(logits, y_test),
        num_parameters=parameter_count(net),
    )
