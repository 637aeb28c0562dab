"""Every onnxruntime run the engine makes stops at its time limit or when the job is canceled (a Loop bomb)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from compression.datasets import DatasetBundle
from compression.errors import JobCanceledError
from compression.metrics.run_guard import RunTimeLimitError
from compression.pipeline import run_pipeline
from compression.settings import EngineSettings
from compression.spec import CompressionSpec


def loop_bomb(path: Path) -> Path:
    """279 bytes that would run 2^62 iterations: the model from the hardening issue."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["x_in", "one"], ["x_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["n", 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["n", 4]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [
            helper.make_tensor("trip", TensorProto.INT64, [], [2**62]),
            helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


SPEC = CompressionSpec.model_validate({"steps": [{"type": "quantize", "mode": "dynamic"}]})


class CancelAfter:
    """A sink whose cancel check raises once `seconds` have passed (from whichever thread asks)."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.threads: set[str] = set()

    def progress(self, fraction: float, message: str | None = None) -> None:
        pass

    def event(self, message: str, data: dict | None = None) -> None:
        pass

    def check_canceled(self) -> None:
        self.threads.add(threading.current_thread().name)
        if time.monotonic() > self.at:
            raise JobCanceledError("canceled")


def test_a_run_past_its_time_limit_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    settings = EngineSettings(eval_max_run_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(RunTimeLimitError, match="EVAL_MAX_RUN_SECONDS"):
        run_pipeline(loop_bomb(tmp_path / "bomb.onnx"), SPEC, DatasetBundle(), tmp_path / "work", settings=settings)
    assert time.monotonic() - started < 60  # seconds, not the 2^62 iterations


def test_cancel_stops_a_run_in_progress(tmp_path: Path) -> None:
    sink = CancelAfter(1.0)
    started = time.monotonic()
    with pytest.raises(JobCanceledError):
        run_pipeline(loop_bomb(tmp_path / "bomb.onnx"), SPEC, DatasetBundle(), tmp_path / "work", sink=sink)
    assert time.monotonic() - started < 60
    assert "onnxruntime-run-watchdog" in sink.threads  # the watchdog asked while onnxruntime was running
