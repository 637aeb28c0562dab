"""Static int8 speed variants on this machine: where the int8 model's time goes and which variant is fastest.

Every variant is built by the engine's static quantizer (calibration, range choice, bias correction,
compaction) with one thing changed, then all of them are timed interleaved against the fp32 input in one
run per batch size (1 thread), and judged on the test split. `--profile` adds onnxruntime's per-op-type
kernel time (medians over runs) for the fp32 model and the engine's choice.

    .venv/bin/python bench/static_speed.py [--models digits_cnn,residual_cnn] [--batches 32,1] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import compression.quantization.modes as modes
import compression.quantization.static_variants as static_variants
import model_zoo
from compression.datasets import Dataset, DatasetBundle
from compression.metrics.fidelity import compare
from compression.metrics.inference import make_session, run_dataset
from compression.metrics.latency import compare_latency
from compression.model_info import inspect_model
from compression.pipeline import run_pipeline
from compression.settings import EngineSettings, LatencySettings
from compression.spec import CompressionSpec

# name -> (step config changes, quantize_static extra_options, forced Conv layout or None for the measured one)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], str | None]] = {
    "ours (measured Conv layout)": ({}, {}, None),
    "small convs float": ({}, {}, static_variants.SMALL_FLOAT),
    "all int8, unpadded": ({}, {}, static_variants.INT8),
    "all int8, channels padded": ({}, {}, static_variants.INT8_PADDED),
    "per-tensor weights": ({"per_channel": False}, {}, None),
    "QOperator format": ({"format": "qoperator"}, {}, None),
    "s8s8 (int8 activations)": ({"activation_type": "int8"}, {}, None),
    "u8 symmetric activations": ({}, {"ActivationSymmetric": True}, None),
}


@contextmanager
def _variant(extra: dict[str, Any], layout: str | None) -> Iterator[None]:
    """quantize_static with extra options added, and (when `layout`) only that Conv layout offered."""
    original_quantize, original_layouts = modes.quantize_static, static_variants.candidate_layouts

    def quantize(*args: Any, **kwargs: Any) -> None:
        kwargs["extra_options"] = {**(kwargs.get("extra_options") or {}), **extra}
        original_quantize(*args, **kwargs)

    def only(small: list[str], pad: bool) -> list[static_variants.ConvLayout]:
        chosen = [c for c in original_layouts(small, True) if c.name == layout]
        return chosen or [static_variants.ConvLayout(static_variants.INT8, [], False)]

    modes.quantize_static = quantize
    if layout is not None:
        static_variants.candidate_layouts = only
    try:
        yield
    finally:
        modes.quantize_static, static_variants.candidate_layouts = original_quantize, original_layouts


def profile(path: Path, feed: dict[str, np.ndarray], runs: int = 300) -> dict[str, float]:
    """Median kernel microseconds per op type (the last two thirds of `runs`, 1 thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[(event["name"], event["args"]["op_name"])].append(event["dur"])
    by_op: dict[str, float] = collections.defaultdict(float)
    for (_, op), durations in per_node.items():
        by_op[op] += float(np.median(durations[len(durations) // 3 :]))
    return dict(sorted(by_op.items(), key=lambda item: -item[1]))


def bench_model(name: str, batches: list[int], runs: int, show_profile: bool, work: Path) -> list[str]:
    model = model_zoo.load(name)
    src = Path(model.path)
    inputs = inspect_model(src).inputs
    test = model.feeds("test")
    eval_set = Dataset.bind({**test, "labels": model.labels("test")}, inputs)
    data = DatasetBundle(calibration=Dataset.bind(model.feeds("train", 512), inputs), eval=eval_set)
    settings = EngineSettings(latency_batch_size=32)
    built: dict[str, Path] = {}
    notes: dict[str, str] = {}
    for label, (config, extra, layout) in VARIANTS.items():
        step = {"type": "quantize", "mode": "static", "speed_guard": False, **config}
        with _variant(extra, layout):
            result = run_pipeline(
                src, CompressionSpec(steps=[step]), data, work / f"{name}_{len(built)}", settings=settings
            )
        built[label] = result.model_path
        chosen = result.metrics.steps[0].details.get("conv_layout", {}).get("chosen")
        notes[label] = f"Conv layout {chosen}" if chosen and layout is None else ""
    reference = run_dataset(make_session(src), eval_set, 256)
    quality: dict[str, str] = {}
    for label, path in built.items():
        fidelity = compare(
            reference, run_dataset(make_session(path), eval_set, 256), eval_set.n_samples, eval_set.labels, False
        )
        assert fidelity.accuracy is not None
        change = 100 * (fidelity.accuracy.output - fidelity.accuracy.input) + 0.0
        worst = min(out.cosine for out in fidelity.outputs.values())
        quality[label] = f"{change:+.2f} pt | {worst:.4f}"
    ratios: dict[str, list[str]] = {label: [] for label in built}
    base_ms: list[str] = []
    for batch in batches:
        feed = {key: value[:batch] for key, value in test.items()}
        timing = LatencySettings(runs=runs, min_rounds=min(40, runs), max_seconds=120.0, warmup=20, threads=1)
        measured = compare_latency([src, *built.values()], feed, timing, batch)
        base_ms.append(f"{1000 * measured.models[0].median_ms:.0f} µs")
        for label, interval in zip(built, measured.ratios, strict=True):
            mark = "" if interval.conclusive else "?"
            ratios[label].append(f"{interval.ratio:.3f} [{interval.low:.3f}, {interval.high:.3f}]{mark}")
    lines = [f"| {name} | fp32 | {' | '.join(base_ms)} | | | |"]
    for label in built:
        lines.append(f"| {name} | {label} | {' | '.join(ratios[label])} | {quality[label]} | {notes[label]} |")
    if show_profile:
        chosen = built["ours (measured Conv layout)"]
        for batch in batches:
            feed = {key: value[:batch] for key, value in test.items()}
            for label, path in (("fp32", src), ("ours", chosen)):
                ops = ", ".join(f"{op} {us:.0f}" for op, us in profile(path, feed).items())
                lines.append(f"<!-- {name} batch {batch} {label} kernel µs: {ops} -->")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits_cnn,residual_cnn")
    parser.add_argument("--batches", default="32,1")
    parser.add_argument("--runs", type=int, default=300, help="interleaved rounds per batch size (cap)")
    parser.add_argument("--profile", action="store_true", help="per-op-type kernel time of fp32 and ours")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    batches = [int(b) for b in args.batches.split(",")]
    header = " | ".join(f"latency ratio, batch {b} [95% interval]" for b in batches)
    print(f"| model | variant | {header} | accuracy change | worst output cosine | note |")
    print("|---|---|" + "---|" * len(batches) + "---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for line in bench_model(name, batches, args.runs, args.profile, Path(tmp)):
                print(line, flush=True)
    print(f"<!-- load average: {Path('/proc/loadavg').read_text().strip()} -->")


if __name__ == "__main__":
    main()
