"""Fixed costs of `auto` that small models used to pay: torch imported by onnxruntime's tools package, searches
of candidates that cannot be chosen; and the time bound's floor that keeps small models' searches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from quant_helpers import feeds_dataset, matmul_model, run_step, save

import compression.quantization.auto as auto
from compression.datasets import DatasetBundle
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


def test_a_search_not_continued_is_in_the_plan_notes_and_its_row(tmp_path, monkeypatch):
    """The wiring: a candidate `_cannot_be_chosen` rules out makes no attempt after its first, and says why."""
    rng = np.random.default_rng(2)
    src = save(matmul_model((rng.standard_normal((512, 256)) * 0.05).astype(np.float32)), tmp_path / "big.onnx")
    datasets = DatasetBundle(eval=feeds_dataset({"x": rng.standard_normal((64, 512)).astype(np.float32)}, src))
    monkeypatch.setattr(
        auto, "_cannot_be_chosen", lambda search, *_: "forced" if search.quantizer.config.mode == "weight_only" else ""
    )
    step = {
        "type": "quantize",
        "mode": "auto",
        "max_accuracy_drop": 0.05,
        "candidates": ["weight_only", "int8_weights"],
    }
    result, _ = run_step(src, step, datasets, tmp_path / "run")
    details = result.metrics.steps[0].details
    assert "weight_only: search not continued after its first attempt: forced" in details["plan"]
    row = next(c for c in details["candidates"] if c["mode"] == "weight_only")
    assert row["quantization_attempts"] == 1 and "search not continued: forced" in row["reasons"]
    assert "weight_only" not in details["search_time"]["search_order"]


def test_a_ranking_that_runs_into_the_bound_is_abandoned(tmp_path):
    """No attempt can follow a ranking past the bound: `rank_nodes` stops at its next stage when told to."""
    from compression.quantization.sensitivity import RankingStopped, rank_nodes

    rng = np.random.default_rng(3)
    src = save(matmul_model((rng.standard_normal((64, 32)) * 0.05).astype(np.float32)), tmp_path / "m.onnx")
    data = feeds_dataset({"x": rng.standard_normal((8, 64)).astype(np.float32)}, src)
    nodes = [node.name for node in onnx.load(str(src)).graph.node]
    asked: list[int] = []

    def stop_at_second_check() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(RankingStopped):
        rank_nodes(src, src, nodes, data, tmp_path / "rank", 1, stop=stop_at_second_check)
    assert len(asked) == 2
    assert rank_nodes(src, src, nodes, data, tmp_path / "rank2", 1, stop=lambda: False)  # not stopped: ranked
