"""onnxruntime's quant_pre_process, with a fallback when its shape inference fails."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from onnxruntime.quantization.shape_inference import quant_pre_process


def preprocess(src: Path, dst: Path, report: Callable[[str], None]) -> Path:
    """Shape inference and graph optimisation; on failure retry without symbolic inference, then skip."""
    attempts = [
        {"skip_symbolic_shape": False},
        {"skip_symbolic_shape": True},
    ]
    for options in attempts:
        try:
            quant_pre_process(str(src), str(dst), skip_optimization=False, **options)
            return dst
        except Exception as exc:  # ORT raises bare Exceptions from its shape inference helpers
            report(f"quant_pre_process failed with {options}: {type(exc).__name__}: {str(exc)[:300]}; falling back")
    report("quantizing without pre-processing")
    return src
