"""What a zoo builder produces (BuiltModel) and what callers get back from the cache (DevModel)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from model_zoo import runtime

Inputs = np.ndarray | dict[str, np.ndarray]
Split = Literal["train", "test"]
LABELS_KEY = "labels"


@dataclass(frozen=True, eq=False)
class BuiltModel:
    """Fresh builder output: the verified graph, its data and the facts measured while building."""

    model: onnx.ModelProto
    x_train: Inputs
    y_train: np.ndarray
    x_test: Inputs
    y_test: np.ndarray
    input_name: str
    output_name: str
    accuracy: float
    num_parameters: int


@dataclass(frozen=True, eq=False)
class DevModel:
    """A trained dev model on disk plus the data it was trained and evaluated on.

    ``x_*`` is one array for single-input models, or a dict keyed by input name otherwise.
    ``accuracy`` is onnxruntime's top-1 accuracy on the test split, measured at build time.
    """

    name: str
    path: Path
    x_train: Inputs
    y_train: np.ndarray
    x_test: Inputs
    y_test: np.ndarray
    input_name: str
    output_name: str
    accuracy: float
    num_parameters: int
    build_seconds: float
    seed: int
    version: int

    @property
    def input_names(self) -> list[str]:
        """All graph input names, in feed order."""
        return list(self.x_test) if isinstance(self.x_test, dict) else [self.input_name]

    def feeds(self, split: Split = "test", limit: int | None = None) -> dict[str, np.ndarray]:
        """Inputs of a split as an onnxruntime feed dict, optionally truncated to the first ``limit`` rows."""
        inputs = self.x_test if split == "test" else self.x_train
        named = inputs if isinstance(inputs, dict) else {self.input_name: inputs}
        return {name: array[:limit] for name, array in named.items()}

    def labels(self, split: Split = "test", limit: int | None = None) -> np.ndarray:
        """Ground-truth class ids of a split."""
        return (self.y_test if split == "test" else self.y_train)[:limit]

    def write_npz(self, path: Path | str, split: Split = "test", limit: int | None = None) -> Path:
        """Write a split as the service's dataset format: one array per input name plus ``labels``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {**self.feeds(split, limit), LABELS_KEY: self.labels(split, limit)}
        with path.open("wb") as handle:  # a file handle stops numpy from appending ".npz"
            np.savez(handle, **arrays)
        return path

    def load_onnx(self) -> onnx.ModelProto:
        """The model proto, freshly parsed (callers may mutate it)."""
        return onnx.load(self.path)

    def evaluate(self, model_path: Path | str | None = None, split: Split = "test", limit: int | None = None) -> float:
        """onnxruntime accuracy of this model, or of a compressed variant with the same interface."""
        logits = runtime.run(model_path or self.path, self.feeds(split, limit))
        return runtime.accuracy(logits, self.labels(split, limit))
