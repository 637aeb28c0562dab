"""Opset upgrades: per-channel QuantizeLinear/DequantizeLinear (an `axis`) exist only from opset 13."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import version_converter

from compression.model_info import default_opset

PER_CHANNEL_MIN_OPSET = 13


def ensure_opset(src: Path, dst: Path, minimum: int, report: Callable[[str], None]) -> tuple[Path, bool]:
    """Upgrade `src` to at least `minimum` with onnx's version converter.

    Returns the path to use and whether the model now has that opset; on failure the caller
    falls back (for example to per-tensor quantization) instead of emitting an unloadable model.
    """
    model = onnx.load(str(src))
    current = default_opset(model)
    if current >= minimum:
        return src, True
    try:
        converted = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(converted)
        onnx.save(converted, str(dst))
    except Exception as exc:  # the converter raises many types for unsupported adapters
        report(f"opset {current} -> {minimum} upgrade failed ({type(exc).__name__}: {str(exc)[:200]})")
        return src, False
    report(f"upgraded opset {current} -> {minimum} so per-channel quantization loads")
    return dst, True
