"""onnxruntime's quant_pre_process, with a fallback when its shape inference fails.

`auto` prepares several candidates from the same graph, and on graphs whose symbolic shape inference fails
each one repeated the failing attempt (ppocr_det: 8 s over 2 calls). The outcome is remembered per graph
content (a hash of the file): the same graph again gets a copy of the first result, and a graph whose
symbolic inference failed goes straight to the fallback. At most `_MEMO_SIZE` graphs are remembered; a
result file that was deleted or rewritten since (another job's work dir) is simply recomputed.

quant_pre_process imports `onnxruntime.tools.symbolic_shape_infer`, and `onnxruntime/tools/__init__.py`
imports torch when it is installed (2.5 s of the 2.7 s the first preprocessing took on deepcut, whose
symbolic inference then fails in 0.06 s). The package is registered without running that `__init__`
(`_tools_package_without_torch`): the same module, with its one torch-backed name imported on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from onnxruntime.quantization.shape_inference import quant_pre_process

from compression.quantization.timing import phase

# onnxruntime's symbolic shape inference saves `sym_shape_infer_temp.onnx` plus external-data files into the
# current directory when it cannot finish; the working directory is process-wide, so one call at a time
_CWD_LOCK = threading.Lock()
_MEMO_SIZE = 16
_RESULTS: OrderedDict[str, tuple[Path, str]] = OrderedDict()  # graph hash -> a preprocessed file, its hash
_SYMBOLIC_FAILED: OrderedDict[str, str] = OrderedDict()  # graph hash -> why symbolic inference failed
_MEMO_LOCK = threading.Lock()


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _remember(memo: OrderedDict, key: str, value: object) -> None:
    with _MEMO_LOCK:
        memo[key] = value
        memo.move_to_end(key)
        while len(memo) > _MEMO_SIZE:
            memo.popitem(last=False)


def preprocess(src: Path, dst: Path, report: Callable[[str], None]) -> Path:
    """Shape inference and graph optimisation; on failure retry without symbolic inference, then skip."""
    attempts = [
        {"skip_symbolic_shape": False},
        {"skip_symbolic_shape": True},
    ]
    src, dst = src.resolve(), dst.resolve()
    key = _digest(src) if src.is_file() and not _has_external_data(src) else None
    cached, digest = _RESULTS.get(key, (None, "")) if key else (None, "")
    if cached is not None and cached.is_file() and _digest(cached) == digest:  # not rewritten since
        dst.parent.mkdir(parents=True, exist_ok=True)
        with phase("preprocess"):
            shutil.copyfile(cached, dst)
        return dst
    if key and key in _SYMBOLIC_FAILED:
        report(f"quant_pre_process: symbolic shape inference failed on this graph before ({_SYMBOLIC_FAILED[key]})")
        attempts = attempts[1:]
    _tools_package_without_torch()
    for options in attempts:
        try:
            with _inside(dst.parent / "preprocess_scratch"), phase("preprocess"):
                quant_pre_process(str(src), str(dst), skip_optimization=False, **options)
            if key:
                _remember(_RESULTS, key, (dst, _digest(dst)))
            return dst
        except Exception as exc:  # ORT raises bare Exceptions from its shape inference helpers
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            report(f"quant_pre_process failed with {options}: {reason}; falling back")
            if key and not options["skip_symbolic_shape"]:
                _remember(_SYMBOLIC_FAILED, key, reason[:120])
    report("quantizing without pre-processing")
    return src


def _tools_package_without_torch() -> None:
    """Register `onnxruntime.tools` without executing its `__init__`, whose only work is importing torch for
    `infer_input_info` (a PyTorch export helper no quantization code uses); that name stays, imported lazily."""
    if "onnxruntime.tools" in sys.modules or "torch" in sys.modules:  # already paid for: nothing to save
        return
    spec = importlib.util.find_spec("onnxruntime.tools")
    if spec is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)  # __path__ set: submodules import from the real folder
    package.have_torch = importlib.util.find_spec("torch")  # type: ignore[attr-defined]

    def lazy(name: str) -> object:
        if name == "infer_input_info":
            from onnxruntime.tools.pytorch_export_helpers import infer_input_info

            return infer_input_info
        raise AttributeError(f"module 'onnxruntime.tools' has no attribute {name!r}")

    package.__getattr__ = lazy  # type: ignore[method-assign]
    if sys.modules.setdefault("onnxruntime.tools", package) is package:
        import onnxruntime

        onnxruntime.tools = package  # type: ignore[attr-defined]  # as the import system sets a subpackage


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


def _has_external_data(path: Path) -> bool:
    """Weights in side files: the graph file's hash does not cover them, so nothing is remembered."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
