"""Distillation bench: structured-pruned students of the digits CNN and residual CNN, recovered by `distill`.

For each model and sparsity: accuracy right after pruning, after distillation from the unpruned model,
and after training the same pruned student on labels only (same init, epochs, lr, seed); top-1 agreement
with the teacher; size and latency of the student vs the teacher (interleaved, batch 32, one thread);
wall time per epoch. The best epoch is chosen on a validation split carved from the train split, and
accuracies are measured on the untouched test split, so selection does not flatter the numbers.

Then the target pipeline on the residual CNN: prune 0.5 -> distill -> static int8 quantize.

    .venv/bin/python bench/distillation.py [--epochs 15] [--runs 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import model_zoo
from compression.datasets import Dataset, DatasetBundle
from compression.metrics.latency import measure_latency
from compression.model_info import inspect_model
from compression.pipeline import run_pipeline
from compression.pruning.structured import structured_prune
from compression.settings import EngineSettings
from compression.spec import CompressionSpec
from compression.training.config import DistillConfig
from compression.training.distiller import QuietHooks, distill
from model_zoo import runtime

MODELS = ("digits_cnn", "residual_cnn")
SPARSITIES = (0.5, 0.75)
VALIDATION = 300


def _splits(dev: model_zoo.DevModel) -> tuple[Dataset, Dataset]:
    """Train minus the last VALIDATION samples, and those samples for picking the best epoch."""
    inputs = inspect_model(dev.path).inputs
    x, y = dev.feeds("train"), dev.labels("train")
    train = Dataset.bind({**{k: v[:-VALIDATION] for k, v in x.items()}, "labels": y[:-VALIDATION]}, inputs)
    val = Dataset.bind({**{k: v[-VALIDATION:] for k, v in x.items()}, "labels": y[-VALIDATION:]}, inputs)
    return train, val


def _agreement(dev: model_zoo.DevModel, path: Path) -> float:
    feeds = dev.feeds("test")
    return float(np.mean(runtime.run(path, feeds).argmax(1) == runtime.run(dev.path, feeds).argmax(1)))


def student_table(epochs: int, runs: int, folder: Path) -> list[str]:
    rows = [
        "| model | sparsity | size ratio | latency ratio | acc teacher | acc pruned | acc distilled | acc labels-only "
        "| agreement distilled / labels-only | s/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        dev = model_zoo.load(name)
        train, val = _splits(dev)
        for sparsity in SPARSITIES:
            pruned = folder / f"{name}_{sparsity}.onnx"
            structured_prune(dev.path, pruned, sparsity=sparsity, importance="l1", round_to=1, min_channels=1,
                             exclude=[], dataset=None, batch_size=256, max_samples=512,
                             check_canceled=lambda: None)  # fmt: skip
            results = {}
            for label, alpha in (("distilled", 0.5), ("labels", 0.0)):
                config = DistillConfig(epochs=epochs, lr=3e-3, alpha=alpha, temperature=4.0, seed=0)
                started = time.perf_counter()
                outcome = distill(dev.path, pruned, train, val, config, EngineSettings(), QuietHooks())
                seconds = time.perf_counter() - started
                path = folder / f"{name}_{sparsity}_{label}.onnx"
                onnx.save(outcome.model, str(path))
                per_epoch = sum(r.seconds for r in outcome.history[1:]) / epochs
                results[label] = (path, per_epoch, seconds)
            teacher_ms, student_ms = (
                s.median_ms
                for s in measure_latency([dev.path, results["distilled"][0]], dev.feeds("test", 32), runs, 10, 1, 32)
            )
            size = results["distilled"][0].stat().st_size / dev.path.stat().st_size
            rows.append(
                f"| {name} | {sparsity} | {size:.3f} | {student_ms / teacher_ms:.3f} | {dev.evaluate():.4f} "
                f"| {dev.evaluate(pruned):.4f} | {dev.evaluate(results['distilled'][0]):.4f} "
                f"| {dev.evaluate(results['labels'][0]):.4f} | {_agreement(dev, results['distilled'][0]):.4f} / "
                f"{_agreement(dev, results['labels'][0]):.4f} | {results['distilled'][1]:.3f} |"
            )
            print(rows[-1], flush=True)
    return rows


def target_table(epochs: int, runs: int, folder: Path) -> list[str]:
    """prune 0.5 -> distill -> static int8 on the residual CNN, measured by the pipeline itself."""
    dev = model_zoo.load("residual_cnn")
    train, val = _splits(dev)
    bundle = DatasetBundle(calibration=train, train=train, eval=val)
    steps = [
        {"type": "prune", "method": "structured", "sparsity": 0.5},
        {"type": "distill", "epochs": epochs, "lr": 3e-3, "alpha": 0.5},
        {"type": "quantize", "mode": "static"},
    ]
    settings = EngineSettings(latency_runs=runs, latency_batch_size=32, latency_threads=1)
    started = time.perf_counter()
    result = run_pipeline(dev.path, CompressionSpec.model_validate({"steps": steps}), bundle, folder / "job",
                          settings=settings)  # fmt: skip
    wall = time.perf_counter() - started
    m = result.metrics
    test_acc = {step.type: None for step in m.steps}
    rows = [
        "| pipeline (residual_cnn) | size ratio (×smaller) | latency ratio (×faster) | test acc input → output "
        "| per step test acc | wall s |",
        "|---|---|---|---|---|---|",
    ]
    paths = sorted((folder / "job").glob("step*_*.onnx"))
    for step in m.steps:
        match = [p for p in paths if p.name.startswith(f"step{step.index}_")]
        test_acc[step.type] = dev.evaluate(match[-1]) if match else None
    per_step = ", ".join(f"{k} {v:.4f}" for k, v in test_acc.items() if v is not None)
    rows.append(
        f"| prune 0.5 → distill → quantize static | {m.ratios['size']:.4f} ({1 / m.ratios['size']:.1f}×) "
        f"| {m.ratios['latency']:.3f} ({1 / m.ratios['latency']:.1f}×) "
        f"| {dev.evaluate():.4f} → {dev.evaluate(result.model_path):.4f} | {per_step} | {wall:.1f} |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--runs", type=int, default=100, help="timed latency runs per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_distill_") as tmp:
        folder = Path(tmp)
        table = student_table(args.epochs, args.runs, folder)
        target = target_table(args.epochs, args.runs, folder)
    print()
    print("\n".join(table))
    print()
    print("\n".join(target))


if __name__ == "__main__":
    main()
