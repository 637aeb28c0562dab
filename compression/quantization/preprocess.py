"""onnxruntime's quant_pre_process, with a fallback when its shape inference fails."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from onnxruntime.quantization.shape_inference import quant_pre_process

from compression.quantization.timing import phase

# onnxruntime's symbolic shape inference saves `sym_shape_infer_temp.onnx` plus external-data files into the
# current directory when it cannot finish; the working directory is process-wide, so one call at a time
_CWD_LOCK = threading.Lock()


def preprocess(src: Path, dst: Path, report: Callable[[str], None]) -> Path:
    """Shape inference and graph optimisation; on failure retry without symbolic inference, then skip."""
    attempts = [
        {"skip_symbolic_shape": False},
        {"skip_symbolic_shape": True},
    ]
    src, dst = src.resolve(), dst.resolve()
    for options in attempts:
        try:
            with _inside(dst.parent / "preprocess_scratch"), phase("preprocess"):
                quant_pre_process(str(src), str(dst), skip_optimization=False, **options)
            return dst
        except Exception as exc:  # ORT raises bare Exceptions from its shape inference helpers
            report(f"quant_pre_process failed with {options}: {type(exc).__name__}: {str(exc)[:300]}; falling back")
    report("quantizing without pre-processing")
    return src


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Run with `folder` as the working directory, so stray files land in the step's scratch space."""
    folder.mkdir(parents=True, exist_ok=True)
    with _CWD_LOCK:
        previous = os.getcwd()
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(previous)
