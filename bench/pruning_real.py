"""Structured pruning on the real-model set: what gets pruned, what stays intact and why, and how long it takes.

For every model of `model_zoo.third_party` (or those named with --models) a child process prunes the model
at --sparsity (l2 importance, the calibration set's first sample feeding the rank-filling shape run) and
reports, judged outside the engine:
  groups       pruned / total dependency groups (intact ones carry a reason)
  params, MACs the pruned model's figures over the input's (MACs of the main graph's Conv, ConvTranspose,
               Gemm, MatMul, LSTM/GRU/RNN at the shapes of one run on the first eval feed; "-" when the
               main graph has none, e.g. everything inside an If)
  valid        onnx.checker passes, onnxruntime loads the model and runs every eval feed, the outputs keep
               their shapes and stay finite
  prune s      wall time of `structured_prune` (load, shape inference, analysis, rewrite, save)
  pass s       with --pass: wall time of the whole prune step (BatchNorm re-estimation and speed check with
               the engine's latency settings) on top, measured separately
  worst cos    lowest per-sample output cosine vs the input over --eval-samples eval feeds (16; no fine-tuning:
               low is expected); mean cos: their mean
  + recon      the same prune with least-squares reconstruction of the layers reading removed channels
               (`reconstruction.py`, engine default limits, on the calibration set): worst cosine, layers
               reconstructed / considered, its seconds (inside `prune s + recon`)
  intact       the most frequent reasons groups were left intact (names elided), with counts

    .venv/bin/python bench/pruning_real.py [--models a,b] [--sparsity 0.3] [--timeout 300] [--pass] [--json out]
                                          [--no-reconstruct]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from model_zoo import third_party, third_party_inputs  # noqa: E402

RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _elide(reason: str) -> str:
    """A reason with tensor/node names elided, so the same cause counts once across layers."""
    return re.sub(r"'[^']*'", "…", reason)


WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", *RNN_GATES})


def _macs(path: Path, feed: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of the main graph's Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN on `feed`, from the
    shapes of one onnxruntime run (static inference loses track of patched and dynamic shapes)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    constants = {t.name: list(t.dims) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in WEIGHTED and n.domain in ("", "ai.onnx")]
    wanted = {name for n in nodes for name in (n.input[0], n.input[1], n.output[0]) if name not in constants}
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in sorted(wanted - existing))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shapes = {**constants, **{n: list(np.shape(v)) for n, v in zip(names, session.run(names, feed), strict=True)}}
    total = 0
    for node in nodes:
        x, w, y = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if x is None or w is None or y is None:
            continue
        if node.op_type == "Conv":
            total += int(np.prod(y)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            total += int(np.prod(x)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            total += int(np.prod(y)) * (x[0] if trans_a else x[-1])
        else:
            layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
            steps, batch = (x[0], x[1]) if layout == 0 else (x[1], x[0])
            dirs, gates_h, inputs = w
            total += steps * batch * dirs * gates_h * (inputs + gates_h // RNN_GATES[node.op_type])
    return total


def _ratio(after: int, before: int) -> float | None:
    return after / before if before else None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a64, b64) / (na * nb))


def _declared_dims(path: Path) -> list[list[int | None]]:
    """Each output's declared dims (None where symbolic): what a valid pruned model must keep."""
    dims = []
    for output in onnx.load(str(path)).graph.output:
        shape = output.type.tensor_type.shape
        dims.append([d.dim_value if d.HasField("dim_value") else None for d in shape.dim])
    return dims


def _validity(source: Path, pruned: Path, feeds: list[dict[str, np.ndarray]]) -> tuple[str, float | None, float | None]:
    """'ok' or why not, and the lowest and mean per-feed cosine over the float outputs of unchanged shape.

    Valid: onnx.checker passes, onnxruntime runs every feed, outputs keep their rank, type and declared
    dims and stay finite (a decoder may emit a different number of steps: symbolic dims may change)."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(onnx.load(str(pruned)))
    except Exception as exc:  # noqa: BLE001
        return f"checker: {str(exc).splitlines()[0][:100]}", None, None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    declared = _declared_dims(source)
    try:
        reference = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        candidate = ort.InferenceSession(str(pruned), options, providers=["CPUExecutionProvider"])
        worst: float | None = None
        per_feed: list[float] = []
        for feed in feeds:
            feed_worst: float | None = None
            for ref, out, dims in zip(reference.run(None, feed), candidate.run(None, feed), declared, strict=True):
                ref, out = np.asarray(ref), np.asarray(out)
                fixed = all(d is None or d <= 0 or d == n for d, n in zip(dims, out.shape, strict=False))
                if out.ndim != ref.ndim or out.dtype != ref.dtype or not fixed:
                    return f"output {out.dtype}{list(out.shape)} vs {ref.dtype}{list(ref.shape)}", None, None
                if np.issubdtype(out.dtype, np.floating):
                    if not np.all(np.isfinite(out)):
                        return "non-finite outputs", None, None
                    if out.shape == ref.shape:
                        value = _cosine(ref, out)
                        feed_worst = value if feed_worst is None else min(feed_worst, value)
            if feed_worst is not None:
                per_feed.append(feed_worst)
                worst = feed_worst if worst is None else min(worst, feed_worst)
    except Exception as exc:  # noqa: BLE001
        return f"onnxruntime: {str(exc).splitlines()[0][:100]}", None, None
    return "ok", worst, float(np.mean(per_feed)) if per_feed else None


def child(
    name: str, sparsity: float, whole_pass: bool, reconstruct: bool = True, eval_samples: int = 16
) -> dict[str, Any]:
    from compression.datasets import Dataset
    from compression.metrics.model_stats import parameter_count
    from compression.model_info import inspect_model
    from compression.pruning.reconstruction import reconstruction_limits
    from compression.pruning.structured import structured_prune
    from compression.settings import EngineSettings

    source = third_party.fetch(name)
    inputs = inspect_model(source).inputs
    calibration = Dataset.bind(third_party_inputs.calibration_set(name), inputs)
    eval_arrays = third_party_inputs.eval_set(name, eval_samples)
    feeds = list(third_party_inputs.feeds(eval_arrays, third_party_inputs.layout(name)))[:eval_samples]
    with tempfile.TemporaryDirectory(prefix="pruning_real_") as tmp:
        out = Path(tmp) / f"{name}.onnx"
        started = time.perf_counter()
        report = structured_prune(
            source, out, sparsity=sparsity, importance="l2", round_to=1, min_channels=1, exclude=[],
            dataset=calibration, batch_size=8, max_samples=8, check_canceled=lambda: None,
        )  # fmt: skip
        prune_s = time.perf_counter() - started
        before, after = onnx.load(str(source)), onnx.load(str(out))
        valid, worst, mean = _validity(source, out, feeds)
        result: dict[str, Any] = {
            "name": name,
            "mb": source.stat().st_size / 1e6,
            "groups_total": report["groups_total"],
            "groups_pruned": report["groups_pruned"],
            "groups_intact": report["groups_skipped"],
            "params_ratio": parameter_count(after) / max(parameter_count(before), 1),
            "macs_ratio": _ratio(_macs(out, feeds[0]), _macs(source, feeds[0])),
            "valid": valid,
            "worst_cosine": worst,
            "mean_cosine": mean,
            "eval_feeds": len(feeds),
            "prune_s": prune_s,
            "shape_inference": report["shape_inference"],
            "reasons": Counter(_elide(s["reason"].split("; ")[0]) for s in report["skipped"]).most_common(),
        }
        if reconstruct:
            rebuilt = Path(tmp) / f"{name}_reconstructed.onnx"
            started = time.perf_counter()
            rebuilt_report = structured_prune(
                source, rebuilt, sparsity=sparsity, importance="l2", round_to=1, min_channels=1, exclude=[],
                dataset=calibration, batch_size=8, max_samples=8, check_canceled=lambda: None,
                reconstruction=reconstruction_limits(EngineSettings()),
            )  # fmt: skip
            result["recon_prune_s"] = time.perf_counter() - started
            checked = _validity(source, rebuilt, feeds)
            result["recon_valid"], result["recon_worst_cosine"], result["recon_mean_cosine"] = checked
            result["reconstruction"] = _recon_summary(rebuilt_report["reconstruction"])
        if whole_pass:
            result["pass_s"], result["pass_metrics"] = _run_pass(source, sparsity, calibration, inputs, Path(tmp))
    return result


def _recon_summary(report: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(report, str):
        return {"status": report}
    keep = ("layers_considered", "layers_reconstructed", "stages", "feeds", "seconds", "kept", "error")
    summary = {k: report.get(k) for k in keep}
    summary["calibration_cosine"] = [report.get("output_cosine_before"), report.get("output_cosine_after")]
    summary["statuses"] = Counter(entry["status"] for entry in report["layers"]).most_common()
    summary["skipped"] = Counter(_elide(reason) for reason in report["skipped"].values()).most_common(3)
    return summary


def _run_pass(source: Path, sparsity: float, calibration: Any, inputs: Any, folder: Path) -> tuple[float, dict]:
    """The prune step as the pipeline runs it (speed check, BatchNorm re-estimation), timed."""
    from compression.contract import PassContext
    from compression.datasets import DatasetBundle
    from compression.passes.prune import PrunePass
    from compression.pruning.config import StructuredPruneConfig

    bundle = DatasetBundle(calibration=calibration, eval=calibration)
    ctx = PassContext(work_dir=folder / "pass", original_model=source, datasets=bundle)
    config = StructuredPruneConfig(method="structured", sparsity=sparsity)
    started = time.perf_counter()
    result = PrunePass(config).run(source, ctx)
    keep = ("latency_ratio", "round_to_used", "batchnorm_recalibrated", "reconstruction")
    metrics = {k: result.metrics.get(k) for k in keep}
    if metrics["reconstruction"] is not None:
        metrics["reconstruction"] = _recon_summary(metrics["reconstruction"])
    return time.perf_counter() - started, metrics


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--sparsity", str(args.sparsity)]
    if args.whole_pass:
        command.append("--pass")
    if not args.reconstruct:
        command.append("--no-reconstruct")
    command += ["--eval-samples", str(args.eval_samples)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timeout after {args.timeout:.0f} s", "wall_s": args.timeout}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"name": name, "error": f"exit {done.returncode}: {tail[:150]}", "wall_s": time.perf_counter() - started}
    return json.loads(lines[-1])


def table(results: list[dict[str, Any]], whole_pass: bool) -> list[str]:
    header = "| model | MB | groups pruned/total | intact | params | MACs | valid | worst / mean cos | prune s |"
    header += " worst / mean cos + recon | layers recon | recon s | prune s + recon |"
    header += " pass s |" if whole_pass else ""
    header += " top intact reasons |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | | | | | | {r['error']} | | | | | | | {'| ' if whole_pass else ''}|")
            continue
        reasons = "; ".join(f"{reason} ×{count}" for reason, count in r["reasons"][:3]) or "-"
        macs = "-" if r["macs_ratio"] is None else f"{r['macs_ratio']:.2f}×"
        worst = "-" if r["worst_cosine"] is None else f"{r['worst_cosine']:.3f} / {r.get('mean_cosine') or 0:.3f}"
        row = (
            f"| {r['name']} | {r['mb']:.1f} | {r['groups_pruned']}/{r['groups_total']} | {r['groups_intact']} "
            f"| {r['params_ratio']:.2f}× | {macs} | {r['valid']} | {worst} | {r['prune_s']:.1f} |"
        )
        row += _recon_cells(r)
        if whole_pass:
            row += f" {r.get('pass_s', 0):.1f} |"
        lines.append(row + f" {reasons.replace('|', '/')} |")
    return lines


def _recon_cells(r: dict[str, Any]) -> str:
    if "reconstruction" not in r:
        return " | | | |"
    recon = r["reconstruction"]
    worst = (
        "-"
        if r["recon_worst_cosine"] is None
        else f"{r['recon_worst_cosine']:.3f} / {r.get('recon_mean_cosine') or 0:.3f}"
    )
    if r["recon_valid"] != "ok":
        worst = r["recon_valid"]
    if "status" in recon:
        return f" {worst} | {recon['status']} | | {r['recon_prune_s']:.1f} |"
    layers = f"{recon['layers_reconstructed']}/{recon['layers_considered']}"
    if recon.get("error"):
        layers += f" ({recon['error'][:60]})"
    elif not recon.get("kept") and recon["layers_considered"]:
        layers += " (reverted)"
    return f" {worst} | {layers} | {recon['seconds']:.1f} | {r['recon_prune_s']:.1f} |"


def summary(results: list[dict[str, Any]], sparsity: float) -> str:
    ok = [r for r in results if "error" not in r and r["valid"] == "ok"]
    pruned = [r for r in ok if r["groups_pruned"] > 0]
    small = [r for r in results if "error" not in r and r["mb"] <= 10]
    slowest = max((r["prune_s"] for r in small), default=0.0)
    return (
        f"sparsity {sparsity}: {len(results)} models, valid {len(ok)}, valid with >= 1 pruned group {len(pruned)} "
        f"({100 * len(pruned) / max(len(results), 1):.0f}%); slowest prune of a <= 10 MB model {slowest:.1f} s"
    )


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: every third-party model)")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--pass", dest="whole_pass", action="store_true", help="also time the whole prune step")
    parser.add_argument("--no-reconstruct", dest="reconstruct", action="store_false",
                        help="skip the second prune with least-squares reconstruction")  # fmt: skip
    parser.add_argument("--eval-samples", type=int, default=16, help="eval samples (feeds) judged per model")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                child(args.child, args.sparsity, args.whole_pass, args.reconstruct, args.eval_samples), default=str
            )
        )
        return
    names = [n for n in args.models.split(",") if n] or list(third_party.THIRD_PARTY_MODELS)
    unknown = sorted(set(names) - set(third_party.THIRD_PARTY_MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(third_party.THIRD_PARTY_MODELS)}")
    print(f"load at start: {uptime()}")
    results = []
    for name in names:
        result = run_child(name, args)
        results.append(result)
        status = result.get("error") or f"{result['groups_pruned']}/{result['groups_total']} {result['valid']}"
        print(f"  {name}: {status}", flush=True)
    print()
    print("\n".join(table(results, args.whole_pass)))
    print()
    print(summary(results, args.sparsity))
    print(f"load at end: {uptime()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
