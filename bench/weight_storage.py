"""Weight storage bench: every weight of a third-party model stored int8 (cast_mul / dequantize_linear) or
float16, against the float model: size, fidelity on the eval feeds, and latency.

Fidelity: the worst per-row cosine of every float output (a row: the last axis, e.g. one step's class
scores) and the share of rows whose argmax changed, over `--samples` eval feeds. Latency: one eval feed,
1 thread, the variants run interleaved (order reversed every round); the median of per-round ratios to the
float model with its quartiles. The load average is printed: on a shared machine the quartiles are wide.

    .venv/bin/python bench/weight_storage.py [--models lac,ppocr_rec] [--rounds 100] [--samples 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from compression.model_info import default_opset  # noqa: E402
from compression.quantization.graph_prep import lift_constants  # noqa: E402
from compression.quantization.weight_storage import store_weights  # noqa: E402
from model_zoo import third_party, third_party_inputs  # noqa: E402

VARIANTS = {
    "int8 cast_mul": {"dtype": "int8"},
    "int8 dequantize_linear": {"dtype": "int8", "rebuild": "dequantize_linear"},
    "float16 Cast": {"dtype": "float16"},
}


def lifted(name: str) -> onnx.ModelProto:
    model = ir.load(third_party.fetch(name))
    lift_constants(model, 16)
    return ir.serde.serialize_model(model)


def variant(base: onnx.ModelProto, options: dict) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(base)
    if options.get("rebuild") == "dequantize_linear" and default_opset(model) < 13:
        model = onnx.version_converter.convert_version(model, 13)
    store_weights(model, min_elements=256, **options)
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def fidelity(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> tuple[float, float]:
    worst, flips, rows = 1.0, 0, 0
    for ref_feed, out_feed in zip(reference, outputs, strict=True):
        for ref, out in zip(ref_feed, out_feed, strict=True):
            if ref.dtype.kind != "f" or ref.size == 0:
                continue
            a = ref.reshape(-1, ref.shape[-1] if ref.ndim else 1).astype(np.float64)
            b = out.reshape(a.shape).astype(np.float64)
            norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
            both_zero = norms == 0
            cos = np.where(both_zero, 1.0, (a * b).sum(-1) / np.where(both_zero, 1.0, norms))
            worst = min(worst, float(cos.min()))
            if a.shape[-1] > 1:
                flips += int((a.argmax(-1) != b.argmax(-1)).sum())
                rows += len(a)
    return worst, flips / rows if rows else 0.0


def bench(name: str, rounds: int, samples: int) -> None:
    base = lifted(name)
    layout = third_party_inputs.layout(name)
    feeds = list(third_party_inputs.feeds(third_party_inputs.eval_set(name, samples), layout))
    models = {"float": base, **{label: variant(base, options) for label, options in VARIANTS.items()}}
    sessions = {label: session(model) for label, model in models.items()}
    reference = [sessions["float"].run(None, feed) for feed in feeds]
    times: dict[str, list[float]] = {label: [] for label in sessions}
    feed = feeds[0]
    for s in sessions.values():
        s.run(None, feed)
    for index in range(rounds):
        order = list(sessions) if index % 2 == 0 else list(sessions)[::-1]
        for label in order:
            started = time.perf_counter()
            sessions[label].run(None, feed)
            times[label].append(time.perf_counter() - started)
    base_times = np.array(times["float"])
    size = base.ByteSize()
    for label, model in models.items():
        ratios = np.array(times[label]) / base_times
        worst, flips = fidelity(reference, [sessions[label].run(None, f) for f in feeds])
        print(
            f"| {name} | {label} | {model.ByteSize() / size:.3f} | {worst:.4f} | {flips:.4f} | "
            f"{np.median(times[label]) * 1e3:.2f} | {np.median(ratios):.3f} "
            f"[{np.percentile(ratios, 25):.3f}, {np.percentile(ratios, 75):.3f}] |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lac,ppocr_rec")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    print(f"load at start: {os.getloadavg()}")
    print("| model | storage | size | worst row cosine | rows with argmax changed | ms | latency ratio [quartiles] |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        bench(name, args.rounds, args.samples)
    print(f"load at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
