"""Optimize bench: the `optimize` step on the development models, every candidate's figures side by side.

For each dev model, one job with a single step `{"type": "optimize", "target": {...}}` (train split minus
300 samples as train and calibration data, those 300 as the eval data the step judges on), then the
independent judge: test-split accuracy (never seen by the job) and the latency ratio against the original
(bench/judge.py: ABBA rounds, batch 32, one thread, median with its bootstrap 95% interval) of the returned
model, and every candidate's figures as the step measured them, the chosen one marked.

The digits test split has 450 samples (one sample = 0.22 points), so a 0.3-point target is decided by one or
two samples: `--seeds 0,1,2` repeats everything on dev models trained from other seeds (same data, other
weights) and pools the test drops (450 x seeds samples) in a summary per model.

    .venv/bin/python bench/optimize.py [--models digits_cnn,residual_cnn] [--max-drop 0.01]
                                       [--latency-ratio 0.5] [--sparsities 0,0.25,0.5] [--epochs 10]
                                       [--qat-epochs 0] [--seeds 0] [--prefer latency]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import model_zoo  # noqa: E402
from bench.judge import compare_latency  # noqa: E402
from compression.datasets import Dataset, DatasetBundle  # noqa: E402
from compression.model_info import inspect_model  # noqa: E402
from compression.pipeline import run_pipeline  # noqa: E402
from compression.settings import EngineSettings  # noqa: E402
from compression.spec import CompressionSpec  # noqa: E402

VALIDATION = 300


def _bundle(dev: model_zoo.DevModel) -> DatasetBundle:
    inputs = inspect_model(dev.path).inputs
    x, y = dev.feeds("train"), dev.labels("train")
    train = Dataset.bind({**{k: v[:-VALIDATION] for k, v in x.items()}, "labels": y[:-VALIDATION]}, inputs)
    val = Dataset.bind({**{k: v[-VALIDATION:] for k, v in x.items()}, "labels": y[-VALIDATION:]}, inputs)
    return DatasetBundle(calibration=train, train=train, eval=val)


@dataclass
class Judged:
    """The returned model on the test split, by the independent judge."""

    base_correct: int
    correct: int
    samples: int
    size_ratio: float
    latency_ratio: float
    step_seconds: float


def run_model(name: str, seed: int, args: argparse.Namespace, folder: Path) -> tuple[list[str], Judged]:
    dev = model_zoo.load(name, seed=seed)
    target: dict[str, Any] = {"max_accuracy_drop": args.max_drop}
    if args.latency_ratio:
        target["latency_ratio"] = args.latency_ratio
    step = {
        "type": "optimize",
        "target": target,
        "sparsities": [float(s) for s in args.sparsities.split(",")],
        "distill_epochs": args.epochs,
        "qat_epochs": args.qat_epochs,
        "prefer": args.prefer,
    }
    settings = EngineSettings(latency_batch_size=32, latency_threads=1)
    started = time.perf_counter()
    events: list[tuple[str, dict[str, Any]]] = []

    class Sink:
        def progress(self, fraction: float, message: str | None = None) -> None:
            pass

        def event(self, message: str, data: dict[str, Any] | None = None) -> None:
            events.append((message, data or {}))

        def check_canceled(self) -> None:
            pass

    result = run_pipeline(dev.path, CompressionSpec.model_validate({"steps": [step]}), _bundle(dev),
                          folder / f"{name}_{seed}", Sink(), settings=settings)  # fmt: skip
    wall = time.perf_counter() - started
    details = result.metrics.steps[0].details
    feed = dev.feeds("test", 32)
    judged = compare_latency(dev.path, result.model_path, feed, budget_s=args.latency_budget)
    base_acc = dev.evaluate()
    rows = [
        f"**{name}** seed {seed} (target {target}; test accuracy {base_acc:.4f}; step {wall:.0f} s)",
        "",
        "| candidate | steps | eval drop (points) | latency ratio (step) | size ratio | within target | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, c in enumerate(details["candidates"]):
        chosen = " **chosen**" if details.get("chosen") == index else ""
        drop = "-" if c["drop"] is None else f"{100 * c['drop']:.2f}"
        latency = "-" if c["latency_ratio"] is None else f"{c['latency_ratio']:.3f}"
        size = "-" if c["size_ratio"] is None else f"{c['size_ratio']:.4f}"
        rows.append(
            f"| sparsity {c['sparsity']}{chosen} | {' → '.join(c['steps']) or '-'} | {drop} | {latency} | {size} "
            f"| {c['within_accuracy_target']} | {c['wall_time_s']:.0f} |"
        )
    returned = "input (no candidate met the target)" if details.get("input_model_returned") else "chosen candidate"
    acc = dev.evaluate(result.model_path)
    samples = len(dev.labels("test"))
    size = result.model_path.stat().st_size / dev.path.stat().st_size
    rows += [
        "",
        f"returned: {returned}; judged on the test split ({samples} samples): accuracy {base_acc:.4f} → {acc:.4f} "
        f"(drop {100 * (base_acc - acc):.2f} points, {round((base_acc - acc) * samples):+d} samples), size ratio "
        f"{size:.4f}, latency ratio {judged.ratio:.3f} [{judged.low:.3f}, {judged.high:.3f}]",
        *(f"note: {n}" for n in details.get("notes", [])),
        *(f"skipped: {s}" for c in details["candidates"] for s in c.get("skipped", [])),
        "",
    ]
    verdict = Judged(round(base_acc * samples), round(acc * samples), samples, size, judged.ratio, wall)
    return rows, verdict


def summary(name: str, judged: list[Judged]) -> str:
    """Test drops pooled over the seeds' dev models: the drop in points over all their test samples."""
    samples = sum(j.samples for j in judged)
    lost = sum(j.base_correct - j.correct for j in judged)
    drops = ", ".join(f"{100 * (j.base_correct - j.correct) / j.samples:.2f}" for j in judged)
    return (
        f"| {name} | {len(judged)} | {samples} | {drops} | {100 * lost / samples:.2f} ({lost:+d} samples) "
        f"| {max(j.size_ratio for j in judged):.4f} | {float(np.median([j.latency_ratio for j in judged])):.3f} "
        f"| {max(j.latency_ratio for j in judged):.3f} | {float(np.mean([j.step_seconds for j in judged])):.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits_cnn,residual_cnn")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--latency-ratio", type=float, default=0.5, help="0: no latency target")
    parser.add_argument("--sparsities", default="0,0.25,0.5")
    parser.add_argument("--epochs", type=int, default=10, help="distill epochs per pruned candidate")
    parser.add_argument("--qat-epochs", type=int, default=0, help="QAT epochs after quantize (0: none)")
    parser.add_argument("--seeds", default="0", help="dev-model seeds (same data, other trained weights)")
    parser.add_argument("--prefer", choices=("latency", "size"), default="latency", help="the step's prefer")
    parser.add_argument("--latency-budget", type=float, default=10.0, help="seconds for the judge's latency ratio")
    args = parser.parse_args()
    print(f"load at start: {uptime()}", flush=True)
    pooled: dict[str, list[Judged]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_optimize_") as tmp:
        for name in args.models.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows, judged = run_model(name, seed, args, Path(tmp))
                pooled.setdefault(name, []).append(judged)
                print("\n".join(rows), flush=True)
    print("| model | seeds | test samples | drop per seed (points) | pooled drop (points) | max size ratio "
          "| median latency ratio | max latency ratio | step s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, judged in pooled.items():
        print(summary(name, judged))
    print(f"load at end: {uptime()}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    main()
