"""Static calibration and the sensitivity ranking stay within their memory setting on a 3x640x640 CNN.

The step runs in a child process (this file run as a script) so its peak RSS is measured on its own: the
kernel's RUSAGE_CHILDREN figure for that one child, read with os.wait4 (getrusage(RUSAGE_CHILDREN) would
report the largest child any earlier test started). onnxruntime's own calibration holds a batch of 32 such samples at
once and the old ranking ran the eval set in batches of 64 with every intermediate tensor exposed: both
reach several GB here. The evaluator's and the latency measurement's batches have settings of their own
(not what this tests), set small; so are the two passes that run over calibration data on their own
(activation range choice and bias correction: 2.7 and 5.0 GB on this model when measured, not bounded by
quant_activation_memory_mb yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
SIZE = 640
SAMPLES = 64
TIMEOUT_S = 1200
PEAK_BOUND_MB = 3000  # the target for any model <= 50 MB; measured ~1.5 GB here, > 4 GB before


def build_cnn(path: Path) -> Path:
    """3 x 640 x 640 -> strided Conv+Relu stages -> 1x1 head: ~35 MB of activations per sample."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x, channels = "image", 3
    for index, (out, stride) in enumerate([(16, 2), (32, 2), (32, 1), (64, 2)]):
        w = (rng.standard_normal((out, channels, 3, 3)) * np.sqrt(2.0 / (channels * 9))).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{index}"),
            numpy_helper.from_array(np.zeros(out, np.float32), f"b{index}"),
        ]
        conv = helper.make_node(
            "Conv",
            [x, f"w{index}", f"b{index}"],
            [f"c{index}"],
            pads=[1] * 4,
            strides=[stride] * 2,
            name=f"conv{index}",
        )
        nodes += [conv, helper.make_node("Relu", [f"c{index}"], [f"r{index}"], name=f"relu{index}")]
        x, channels = f"r{index}", out
    inits.append(numpy_helper.from_array((rng.standard_normal((6, channels, 1, 1)) * 0.1).astype(np.float32), "head"))
    nodes.append(helper.make_node("Conv", [x, "head"], ["out"], name="head"))
    graph = helper.make_graph(
        nodes,
        "cnn640",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 6, SIZE // 16, SIZE // 16])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def child(work: Path) -> None:
    """Static quantize with a sensitivity search (max drop 0 ranks every node); prints the step's details."""
    sys.path.insert(0, str(REPO))
    from compression.datasets import Dataset, DatasetBundle
    from compression.model_info import inspect_model
    from compression.pipeline import run_pipeline
    from compression.settings import EngineSettings
    from compression.spec import CompressionSpec

    src = build_cnn(work / "cnn640.onnx")
    rng = np.random.default_rng(1)
    inputs = inspect_model(src).inputs

    def data() -> Dataset:
        return Dataset.bind({"image": rng.uniform(0, 1, (SAMPLES, 3, SIZE, SIZE)).astype(np.float32)}, inputs)

    settings = EngineSettings(
        eval_batch_size=4,
        latency_batch_size=1,
        latency_runs=3,
        quant_exclusion_rounds=2,
        quant_activation_range_choice=False,
        quant_bias_correction=False,
    )
    step = {
        "type": "quantize",
        "mode": "static",
        "calibration_samples": SAMPLES,
        "max_accuracy_drop": 0.0,
        "keep_small_convs_float": False,
        "speed_guard": False,
    }
    datasets = DatasetBundle(calibration=data(), eval=data())
    result = run_pipeline(src, CompressionSpec(steps=[step]), datasets, work / "run", None, settings)
    details = result.metrics.steps[0].details
    print(json.dumps({"calibration": details.get("calibration"), "sensitivity": len(details.get("sensitivity", []))}))


@pytest.mark.slow
def test_calibration_and_ranking_of_a_640x640_cnn_stay_within_memory():
    with (
        tempfile.TemporaryDirectory() as work,
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
    ):
        process = subprocess.Popen([sys.executable, __file__, work], stdout=out, stderr=err, text=True, cwd=REPO)
        watchdog = threading.Timer(TIMEOUT_S, process.kill)  # wait4 has no timeout of its own
        watchdog.start()
        _, status, usage = os.wait4(process.pid, 0)
        watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert process.returncode == 0, stderr[-3000:]
    peak_mb = usage.ru_maxrss / 1024
    report = json.loads(stdout.strip().splitlines()[-1])
    plan = report["calibration"]
    assert plan["samples"] == SAMPLES and plan["batch"] < 32 and plan["activation_bytes_per_sample"] > 20 * 2**20
    assert report["sensitivity"] >= 4  # the ranking ran over the eval set
    assert peak_mb < PEAK_BOUND_MB, f"peak RSS {peak_mb:.0f} MB"


if __name__ == "__main__":
    child(Path(sys.argv[1]))
