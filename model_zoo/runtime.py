"""onnxruntime helpers: run a model on a feed dict, check parity with torch, measure accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

PARITY_ATOL = 1e-4


class ParityError(AssertionError):
    """The ONNX graph does not reproduce the trained torch module: a builder bug, never ignorable."""


def session(model: onnx.ModelProto | Path | str) -> ort.InferenceSession:
    """Single-threaded CPU session so results do not depend on the machine's core count."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto | Path | str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """First output of the model for the given named inputs."""
    return session(model).run(None, dict(feeds))[0]


def check_parity(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], expected: np.ndarray) -> np.ndarray:
    """Raise ParityError unless onnxruntime matches the torch output within PARITY_ATOL; return ORT's."""
    actual = run(model, feeds)
    if actual.shape != expected.shape:
        raise ParityError(f"{model.graph.name}: output shape {actual.shape} != torch {expected.shape}")
    worst = float(np.max(np.abs(actual - expected)))
    if not worst <= PARITY_ATOL:
        raise ParityError(f"{model.graph.name}: max |onnx - torch| = {worst:.3g} > {PARITY_ATOL}")
    return actual


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of class logits."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))
