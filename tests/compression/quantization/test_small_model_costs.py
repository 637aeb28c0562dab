"""Fixed costs of `auto` that small models used to pay: torch imported by onnxruntime's tools package, searches
of candidates that cannot be chosen; and the time bound's floor that keeps small models' searches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

from compression.quantization.auto import _cannot_be_chosen
from compression.quantization.config import Objective
from compression.quantization.timing import SearchClock
from compression.settings import EngineSettings

ROOT = Path(__file__).resolve().parents[3]


def test_preprocess_does_not_import_torch(digits_cnn, tmp_path):
    """quant_pre_process's symbolic inference no longer pulls in torch via onnxruntime/tools/__init__.py."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from compression.quantization.preprocess import preprocess
        out = preprocess(Path({str(digits_cnn.path)!r}), Path({str(tmp_path / "pre.onnx")!r}), lambda m: None)
        assert out.is_file()
        loaded = "torch" in sys.modules
        import onnxruntime.tools
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        assert onnxruntime.tools.have_torch is not None and callable(onnxruntime.tools.infer_input_info)
        print("torch imported:", loaded)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch imported: False" in done.stdout


def _search(mode: str, first_ok: bool, first_bytes: int | None) -> SimpleNamespace:
    return SimpleNamespace(
        first_ok=first_ok, first_bytes=first_bytes, quantizer=SimpleNamespace(config=SimpleNamespace(mode=mode))
    )


def test_a_search_that_cannot_be_chosen_is_not_continued():
    """A candidate that missed the budget at first returns at least its first attempt's size; once a weight-storage
    candidate met it at once, clearly smaller, neither 'size' nor 'balanced' can pick it."""
    weight_only = _search("weight_only", False, 1000)
    met = _search("int8_weights", True, 500)
    why = _cannot_be_chosen(weight_only, [weight_only, met], Objective.BALANCED, 0.1)
    assert "int8_weights met the budget at once at 0.50x" in why
    assert _cannot_be_chosen(weight_only, [weight_only, met], Objective.SIZE, 0.1)
    assert not _cannot_be_chosen(weight_only, [weight_only, met], Objective.LATENCY, 0.1)  # may be faster
    assert not _cannot_be_chosen(weight_only, [weight_only, _search("int8_weights", True, 950)], Objective.SIZE, 0.1)
    # an int8-compute candidate that met the budget may turn out clearly slower: it rules nothing out
    assert not _cannot_be_chosen(weight_only, [weight_only, _search("static", True, 100)], Objective.SIZE, 0.1)
    assert not _cannot_be_chosen(_search("dynamic", False, None), [met], Objective.SIZE, 0.1)  # no model


def test_the_time_bound_has_a_floor_in_seconds():
    clock = SearchClock(1e-9, min_s=60.0)
    clock.first_attempt(0.01)
    assert clock.limit_s == 60.0 and not clock.expired()
    assert SearchClock(1e-9).limit_s is None  # no unit yet: never expired
    bare = SearchClock(1e-9)
    bare.first_attempt(0.01)
    assert bare.expired()
    assert EngineSettings().quantize.search_time_min_s > 0
