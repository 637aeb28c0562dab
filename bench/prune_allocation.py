"""Structured pruning with uniform vs sensitivity allocation on the real-model set, judged on unseen inputs.

For every model of `model_zoo.third_party` (or those named with --models) a child process prunes the model at
--sparsity four ways: allocation uniform / sensitivity, each without and with least-squares reconstruction
(engine default limits; l2 importance; the calibration set drives the allocation, the reconstruction and the
shape run). Each pruned model is compared with the original on --eval-samples eval feeds the prune never saw
(`bench/pruning_real.py`'s check: onnxruntime loads and runs it, shapes kept, finite outputs):

  params       the pruned model's parameters over the input's (sensitivity must remove at least as many
               weights as uniform in the groups it measured; the ratio shows the whole model)
  worst / mean lowest and mean per-sample output cosine to the original (no fine-tuning)
  alloc        groups measured / prunable and the allocation's seconds (inside prune s)

    .venv/bin/python bench/prune_allocation.py [--models a,b] [--sparsity 0.3] [--timeout 300] [--json out]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import onnx  # noqa: E402

from bench.pruning_real import _validity, uptime  # noqa: E402
from model_zoo import third_party, third_party_inputs  # noqa: E402

VARIANTS = (("uniform", False), ("sensitivity", False), ("uniform", True), ("sensitivity", True))


def child(name: str, sparsity: float, eval_samples: int) -> dict[str, Any]:
    from compression.datasets import Dataset
    from compression.metrics.model_stats import parameter_count
    from compression.model_info import inspect_model
    from compression.pruning.allocation import allocation_limits
    from compression.pruning.reconstruction import reconstruction_limits
    from compression.pruning.structured import structured_prune
    from compression.settings import EngineSettings

    settings = EngineSettings()
    source = third_party.fetch(name)
    calibration = Dataset.bind(third_party_inputs.calibration_set(name), inspect_model(source).inputs)
    eval_arrays = third_party_inputs.eval_set(name, eval_samples)
    feeds = list(third_party_inputs.feeds(eval_arrays, third_party_inputs.layout(name)))[:eval_samples]
    parameters = parameter_count(onnx.load(str(source)))
    result: dict[str, Any] = {"name": name, "mb": source.stat().st_size / 1e6, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="prune_allocation_") as tmp:
        for allocation, reconstruct in VARIANTS:
            out = Path(tmp) / f"{allocation}_{reconstruct}.onnx"
            started = time.perf_counter()
            report = structured_prune(
                source, out, sparsity=sparsity, importance="l2", round_to=1, min_channels=1, exclude=[],
                dataset=calibration, batch_size=8, max_samples=8, check_canceled=lambda: None,
                reconstruction=reconstruction_limits(settings) if reconstruct else None,
                allocation=allocation_limits(settings) if allocation == "sensitivity" else None,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            valid, worst, mean = _validity(source, out, feeds)
            alloc = report["allocation"]
            result["variants"][f"{allocation}{' + recon' if reconstruct else ''}"] = {
                "params_ratio": parameter_count(onnx.load(str(out))) / max(parameters, 1),
                "valid": valid,
                "worst": worst,
                "mean": mean,
                "prune_s": seconds,
                "allocation": {
                    k: alloc.get(k)
                    for k in ("method", "reason", "seconds", "samples", "groups_measured", "groups_fixed")
                },  # fmt: skip
            }
    return result


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--sparsity", str(args.sparsity),
               "--eval-samples", str(args.eval_samples)]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timeout after {args.timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"name": name, "error": f"exit {done.returncode}: {tail[:150]}"}
    return json.loads(lines[-1])


def _cell(variant: dict[str, Any]) -> str:
    if variant["valid"] != "ok":
        return f"{variant['valid']} | |"
    worst = "-" if variant["worst"] is None else f"{variant['worst']:.3f} / {variant['mean']:.3f}"
    return f"{variant['params_ratio']:.3f} | {worst} |"


def table(results: list[dict[str, Any]]) -> list[str]:
    header = "| model | MB |"
    for label, _ in ((f"{a}{' + recon' if r else ''}", None) for a, r in VARIANTS):
        header += f" {label}: params | {label}: worst / mean |"
    header += " alloc groups | alloc s |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | | {r['error']} |" + " |" * (header.count("|") - 4))
            continue
        row = f"| {r['name']} | {r['mb']:.1f} |"
        for variant in r["variants"].values():
            row += f" {_cell(variant)}"
        alloc = r["variants"]["sensitivity"]["allocation"]
        if alloc["method"] == "sensitivity":
            groups = f"{alloc['groups_measured']}/{alloc['groups_measured'] + alloc['groups_fixed']}"
            row += f" {groups} ({alloc['samples']} samples) | {alloc['seconds']:.1f} |"
        else:
            row += f" uniform: {alloc.get('reason')} | |"
        lines.append(row)
    return lines


def summary(results: list[dict[str, Any]]) -> str:
    def better(a: str, b: str) -> str:
        pairs = [(r["variants"][a]["worst"], r["variants"][b]["worst"]) for r in results if "error" not in r]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        up = sum(y > x + 0.01 for x, y in pairs)
        down = sum(y < x - 0.01 for x, y in pairs)
        return f"{b} vs {a}: worst cosine up >0.01 on {up}, down on {down}, of {len(pairs)}"

    return "; ".join([better("uniform", "sensitivity"), better("uniform + recon", "sensitivity + recon")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: every third-party model)")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    parser.add_argument("--eval-samples", type=int, default=16, help="eval samples (feeds) judged per model")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.sparsity, args.eval_samples), default=str))
        return
    names = [n for n in args.models.split(",") if n] or list(third_party.THIRD_PARTY_MODELS)
    unknown = sorted(set(names) - set(third_party.THIRD_PARTY_MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(third_party.THIRD_PARTY_MODELS)}")
    load_start = uptime()
    print(f"load at start: {load_start}", flush=True)
    results = []
    for name in names:
        results.append(run_child(name, args))
        print(f"  {name} done", flush=True)
    print("\n".join(table(results)))
    print(summary(results))
    load_end = uptime()
    print(f"load at end: {load_end}")
    if args.json:
        args.json.write_text(json.dumps({"load": [load_start, load_end], "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
