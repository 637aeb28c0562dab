"""Small trained ONNX models (plus their data) that the project's tests and benchmarks compress.

Use ``model_zoo.load("digits_cnn")`` or ``model_zoo.digits_cnn.load()``; builds are cached on disk
(see ``model_zoo.cache``), so only the first call trains.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from model_zoo.devmodel import BuiltModel, DevModel
from model_zoo.third_party import THIRD_PARTY_MODELS, ThirdPartyUnavailable, fetch

MODEL_NAMES: tuple[str, ...] = ("digits_cnn", "residual_cnn", "mlp", "transformer_block")

__all__ = [
    "MODEL_NAMES",
    "THIRD_PARTY_MODELS",
    "BuiltModel",
    "DevModel",
    "ThirdPartyUnavailable",
    "fetch",
    "load",
]


def load(name: str, seed: int = 0, root: Path | None = None) -> DevModel:
    """Load (building on first use) the dev model called ``name``."""
    if name not in MODEL_NAMES:
        raise KeyError(f"unknown dev model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    return importlib.import_module(f"model_zoo.{name}").load(seed=seed, root=root)
