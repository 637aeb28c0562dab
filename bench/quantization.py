"""Quantize bench: every mode of the quantize step next to onnxruntime's quantizer called with its defaults.

Every output (ours and onnxruntime's) is timed against the fp32 input in an interleaved run of its
own (batch 32, one thread), so both sides of each ratio share the same machine noise. Accuracy is top-1 on the model's test split; agreement is top-1 agreement with the fp32 model.

    .venv/bin/python bench/quantization.py [--runs 100] [--models digits_cnn,mlp] [--real]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

import model_zoo
from compression.datasets import Dataset, DatasetBundle
from compression.metrics.latency import measure_latency
from compression.model_info import inspect_model
from compression.pipeline import run_pipeline
from compression.settings import EngineSettings
from compression.spec import CompressionSpec

MODES: list[tuple[str, dict[str, Any]]] = [
    ("ours: dynamic", {"mode": "dynamic"}),
    ("ours: static qdq per-channel", {"mode": "static"}),
    ("ours: weight_only int4", {"mode": "weight_only", "speed_guard": False}),
    ("ours: fp16", {"mode": "fp16"}),
    ("ours: auto (1 pt)", {"mode": "auto", "max_accuracy_drop": 0.01}),
]
BATCH = 32


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        n = len(next(iter(feeds.values())))
        self._it = iter([{k: v[i : i + BATCH] for k, v in feeds.items()} for i in range(0, n, BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _ort_defaults(src: Path, work: Path, calib: dict[str, np.ndarray]) -> list[tuple[str, Path | None, str]]:
    """onnxruntime's quantizers exactly as a user would first call them."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers.float16 import convert_float_to_float16

    runs: list[tuple[str, Path | None, str]] = []
    out = work / "ort_dynamic.onnx"
    quantize_dynamic(str(src), str(out))
    runs.append(("onnxruntime quantize_dynamic()", out, ""))
    out = work / "ort_static.onnx"
    try:
        quantize_static(str(src), str(out), _Reader(calib))
        runs.append(("onnxruntime quantize_static()", out, ""))
    except Exception as exc:  # report, don't hide
        runs.append(("onnxruntime quantize_static()", None, f"failed: {type(exc).__name__}"))
    out = work / "ort_nbits.onnx"
    import onnx

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)))
    quantizer.process()
    quantizer.model.save_model_to_file(str(out))
    runs.append(("onnxruntime MatMulNBitsQuantizer()", out, ""))
    out = work / "ort_fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(out))
    runs.append(("onnxruntime float16 (keep_io_types)", out, "keep_io_types=True so fp32 feeds run"))
    return runs


def _accuracy(path: Path, feeds: dict[str, np.ndarray], labels: np.ndarray) -> tuple[float, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [session.run(None, {k: v[i : i + 256] for k, v in feeds.items()})[0] for i in range(0, len(labels), 256)]
    )
    predictions = logits.reshape(len(labels), -1).argmax(1)
    return float(np.mean(predictions == labels)), predictions


def bench_model(name: str, runs: int) -> list[str]:
    model = model_zoo.load(name)
    src = Path(model.path)
    inputs = inspect_model(src).inputs
    test_feeds, labels = model.feeds("test"), model.labels("test")
    calib = model.feeds("train", 512)
    datasets = DatasetBundle(
        calibration=Dataset.bind({**calib, "labels": model.labels("train", 512)}, inputs),
        eval=Dataset.bind({**test_feeds, "labels": labels}, inputs),
    )
    settings = EngineSettings(latency_runs=5, quant_latency_runs=max(runs // 3, 20))
    rows: list[tuple[str, Path | None, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, step in MODES:
            result = run_pipeline(
                src,
                CompressionSpec(steps=[{"type": "quantize", **step}]),
                datasets,
                work / label[6:],
                settings=settings,
            )
            details = result.metrics.steps[0].details
            note = ""
            if details.get("input_model_returned"):
                note = "input returned: " + details.get("reason", "")[:60]
            elif step["mode"] == "auto":
                note = f"chose {details.get('chosen')}"
            kept = details.get("nodes_kept_float") or []
            if kept:
                note += f" kept float: {len(kept)}"
            rows.append((label, result.model_path, note.strip()))
        rows += _ort_defaults(src, work, calib)
        feed = {k: v[:BATCH] for k, v in test_feeds.items()}
        latency: dict[Path, float] = {}
        base_latency = 0.0
        for _, path, _ in rows:
            if path is None:
                continue
            # each output is timed against the input in its own interleaved run: a one-model deployment
            # keeps its weights in cache, which a round-robin over 11 models would not
            before, after = measure_latency([src, path], feed, runs=runs, warmup=10, threads=1, batch_size=BATCH)
            latency[path] = after.median_ms / before.median_ms
            base_latency = before.median_ms
        base_acc, base_pred = _accuracy(src, test_feeds, labels)
        lines = [f"| {name} | fp32 input | 1.000 | 1.000 ({base_latency:.3f} ms) | {100 * base_acc:.2f}% | 100.0% | |"]
        for label, path, note in rows:
            if path is None:
                lines.append(f"| {name} | {label} | - | - | - | - | {note} |")
                continue
            acc, pred = _accuracy(path, test_feeds, labels)
            agree = float(np.mean(pred == base_pred))
            lines.append(
                f"| {name} | {label} | {path.stat().st_size / src.stat().st_size:.3f} | {latency[path]:.3f} | "
                f"{100 * (acc - base_acc):+.2f} pt | {100 * agree:.1f}% | {note} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="interleaved timed runs per model")
    parser.add_argument("--models", default=",".join(model_zoo.MODEL_NAMES))
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    print(
        "| model | method | size ratio | latency ratio (batch 32, 1 thread) | accuracy change | top-1 agreement | note |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for line in bench_model(name, args.runs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
