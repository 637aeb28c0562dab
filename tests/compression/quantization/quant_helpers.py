"""Shared helpers for the quantize-step tests: run one step through the real pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from compression.datasets import Dataset, DatasetBundle
from compression.model_info import inspect_model
from compression.pipeline import PipelineResult, run_pipeline
from compression.settings import EngineSettings
from compression.spec import CompressionSpec
from model_zoo import DevModel

SETTINGS = EngineSettings(latency_runs=40)


@dataclass
class Recorder:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    progress_values: list[float] = field(default_factory=list)

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.progress_values.append(fraction)

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((message, data or {}))

    def check_canceled(self) -> None:
        pass

    def text(self) -> str:
        return "\n".join(message for message, _ in self.events)


def bundle(model: DevModel, calibration: bool = True, eval_limit: int | None = 600) -> DatasetBundle:
    inputs = inspect_model(model.path).inputs

    def bind(split: str, limit: int | None) -> Dataset:
        return Dataset.bind({**model.feeds(split, limit), "labels": model.labels(split, limit)}, inputs)

    return DatasetBundle(calibration=bind("train", 256) if calibration else None, eval=bind("test", eval_limit))


def run_step(
    path: Path,
    step: dict[str, Any],
    datasets: DatasetBundle,
    work: Path,
    settings: EngineSettings = SETTINGS,
) -> tuple[PipelineResult, Recorder]:
    recorder = Recorder()
    result = run_pipeline(path, CompressionSpec(steps=[step]), datasets, work, recorder, settings)
    return result, recorder


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def matmul_model(
    weight: np.ndarray, opset: int = 17, constant_weight: bool = False, name: str = "mm"
) -> onnx.ModelProto:
    """x[N,K] @ W[K,M] -> y; W as an initializer or a Constant node."""
    k, m = weight.shape
    nodes, inits = [], []
    w = helper.make_tensor("W", TensorProto.FLOAT, weight.shape, weight.ravel().tolist())
    if constant_weight:
        nodes.append(helper.make_node("Constant", [], ["W"], value=w, name="const_w"))
    else:
        inits.append(w)
    nodes.append(helper.make_node("MatMul", ["x", "W"], ["y"], name=name))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feeds_dataset(arrays: dict[str, np.ndarray], path: Path, labels: np.ndarray | None = None) -> Dataset:
    data = dict(arrays)
    if labels is not None:
        data["labels"] = labels
    return Dataset.bind(data, inspect_model(path).inputs)
