"""Real-model distillation bench: structured prune at 0.3, then distill on the job's calibration inputs, judged.

For every model of `model_zoo.third_party` (or those named with --models), one engine job in a subprocess
of its own (killed past --timeout): the pipeline `prune structured 0.3 -> distill` with the model's
calibration set as its train data (unlabeled: the teacher's outputs are the targets; the best epoch is
picked on the last fifth of that set, held out of training; training adds mixed/noised copies of the rest). Distill runs at most --epochs epochs and
--max-seconds of training. Then the independent judge (`bench/judge.py`, onnxruntime + numpy only) compares
the pruned model and the distilled model with the original on the model's EVAL inputs, which the job never
saw: worst per-sample output cosine (and worst per-slice, top-1 agreement where outputs are scores).

    .venv/bin/python bench/distill_real.py [--models a,b] [--epochs 30] [--max-seconds 90] [--timeout 420]
                                           [--sparsity 0.3] [--allocation uniform] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.judge import FidelityVerdict, judge_models  # noqa: E402
from bench.real_models import READY_MARKER, LogProgress, run_job, uptime  # noqa: E402
from model_zoo import third_party, third_party_inputs  # noqa: E402

RESULT_FILE = "result.json"
TARGET = 0.98


@dataclass
class DistillResult:
    name: str
    ok: bool
    note: str = ""
    wall_s: float = 0.0
    prune_s: float | None = None
    distill_s: float | None = None
    parameters_ratio: float | None = None
    before_sample: float | None = None
    before_slice: float | None = None
    after_sample: float | None = None
    after_slice: float | None = None
    after_top1: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    lr: float | None = None
    returned: str | None = None  # "trained", or "input" (no epoch beat it, or the guard rejected the trained one)
    guard: str = ""
    auto_hints: int | None = None
    s_per_epoch: float | None = None
    best_step: int | None = None
    steps: int | None = None
    checks: int | None = None  # selection checks run (epoch ends and inside epochs)
    fresh_copies: bool | None = None
    loss_curve: list[float] | None = None  # eval loss at each check
    backoffs: int | None = None  # times training went back to its best state with a lower learning rate
    refit: str | None = None  # the prune step's least-squares reconstruction: layers refitted / considered
    allocation: str | None = None  # the prune step's per-group sparsity: method, groups measured, seconds

    @property
    def reached(self) -> bool:
        return self.after_sample is not None and self.after_sample >= TARGET


def _prune_spec(args: argparse.Namespace) -> dict[str, Any]:
    step = {"type": "prune", "method": "structured", "sparsity": args.sparsity, "speed_check": False}
    return {"steps": [{**step, **({"allocation": args.allocation} if args.allocation else {})}]}


def _distill_step(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "type": "distill",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_seconds": args.max_seconds,
        "temperature": 1.0,
        **({"lr": args.lr} if args.lr else {}),
        **({"anchor": args.anchor} if args.anchor else {}),
        **({"check_seconds": args.check_seconds} if args.check_seconds else {}),
        **({"augment": args.augment} if args.augment is not None else {}),
        **({"fresh_copies": False} if args.no_fresh_copies else {}),
        **({"auto_hints": args.auto_hints} if args.auto_hints is not None else {}),
    }


def child_main(model: Path, spec_json: str, work: Path) -> None:
    """Run prune -> distill on `model` with calibration.npz as calibration and train data; write result.json."""
    started = time.perf_counter()
    record: dict[str, Any]
    try:
        import torch  # noqa: F401  (imported before the marker: the distill step needs it)

        from compression.datasets import DatasetBundle
        from compression.jsonable import to_jsonable
        from compression.model_info import inspect_model
        from compression.pipeline import run_pipeline
        from compression.settings import EngineSettings
        from compression.spec import CompressionSpec

        print(READY_MARKER, flush=True)  # imports done: the parent's timeout clock starts here
        started = time.perf_counter()
        specs = json.loads(spec_json)
        inputs = inspect_model(model).inputs
        calibration = work / "calibration.npz"
        # the job's only data: the last fifth picks the best epoch (the pipeline needs eval data to measure on)
        roles = {"calibration": calibration, "train": work / "train.npz", "eval": work / "selection.npz"}
        bundle = DatasetBundle.load(roles, inputs)
        settings = EngineSettings(latency_runs=5, latency_max_seconds=3.0, latency_min_rounds=3)
        pruned = run_pipeline(model, CompressionSpec.model_validate(specs["prune"]), bundle, work / "prune",
                              LogProgress(), settings=settings)  # fmt: skip
        prune = to_jsonable(pruned.metrics)["steps"][0]
        record = {"ok": True, "pruned": None, "prune_reason": str(prune["details"].get("reason", "")),
                  "prune_s": prune["wall_time_s"], "refit": _refit(prune["details"].get("reconstruction")),
                  "allocation": _allocation(prune["details"].get("allocation"))}  # fmt: skip
        if prune["changed"]:
            # the teacher is the pipeline's input (the original); the pruned model is the student
            distill_spec = {"steps": [{**specs["distill"], "student": str(pruned.model_path)}]}
            result = run_pipeline(model, CompressionSpec.model_validate(distill_spec), bundle, work / "distill",
                                  LogProgress(), settings=settings)  # fmt: skip
            distill = to_jsonable(result.metrics)["steps"][0]
            record.update(
                pruned=str(pruned.model_path),
                output=str(result.model_path),
                distill_s=distill["wall_time_s"],
                parameters_ratio=distill["details"].get("ratios", {}).get("parameters"),
                best_epoch=distill["details"].get("best_epoch"),
                epochs_run=len(distill["details"].get("loss_curve", [])) - 1,
                lr=distill["details"].get("lr"),
                returned=distill["details"].get("returned"),
                guard=(distill["details"].get("guard") or {}).get("reason", distill["details"].get("reason", "")),
                auto_hints=len(distill["details"].get("auto_hints") or []),
                s_per_epoch=distill["details"].get("seconds_per_epoch"),
                best_step=distill["details"].get("best_step"),
                steps=distill["details"].get("steps"),
                checks=len(distill["details"].get("checks") or []) or None,
                fresh_copies=distill["details"].get("fresh_copies"),
                backoffs=len(distill["details"].get("backoffs") or []),
                loss_curve=[round(c["eval_loss"], 5) for c in distill["details"].get("checks") or []] or None,
            )
    except BaseException as exc:  # noqa: BLE001  (every failure is this job's result)
        record = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    record["wall_s"] = time.perf_counter() - started
    (work / RESULT_FILE).write_text(json.dumps(record, indent=1, default=str))


def _allocation(report: Any) -> str | None:
    """'sensitivity 17/19 in 11 s' (groups measured / prunable), or 'uniform (reason)'."""
    if not isinstance(report, dict):
        return None
    if report.get("method") != "sensitivity":
        return f"uniform ({report['reason']})" if report.get("reason") else "uniform"
    groups = report.get("groups_measured", 0) + report.get("groups_fixed", 0)
    return f"sensitivity {report.get('groups_measured', 0)}/{groups} in {report.get('seconds', 0):.0f} s"


def _refit(report: Any) -> str | None:
    """'refitted/considered' layers (', reverted' when the whole-model check undid them), or the reason."""
    if report is None:
        return None
    if isinstance(report, str):
        return report
    text = f"{report.get('layers_reconstructed', 0)}/{report.get('layers_considered', 0)}"
    if report.get("error"):
        return f"{text}, stopped: {_short(str(report['error']), 60)}"
    return f"{text}, reverted" if report.get("layers_reconstructed") and not report.get("kept") else text


def _short(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bench_model(name: str, spec_json: str, folder: Path, args: argparse.Namespace) -> DistillResult:
    try:
        source = third_party.fetch(name)
    except third_party.ThirdPartyUnavailable as exc:
        return DistillResult(name, False, f"unavailable: {_short(str(exc))}")
    work = folder / name
    work.mkdir(parents=True, exist_ok=True)
    calibration = third_party_inputs.calibration_set(name)
    third_party_inputs.write_npz(calibration, work / "calibration.npz")
    # the job's train data: the calibration set itself, or --train-samples unlabeled inputs of the same kind
    train = third_party_inputs.calibration_set(name, args.train_samples) if args.train_samples else calibration
    n = third_party_inputs.n_samples(train)
    keep = n - max(2, n // 5)
    third_party_inputs.write_npz({k: v[:keep] for k, v in train.items()}, work / "train.npz")
    third_party_inputs.write_npz({k: v[keep:] for k, v in train.items()}, work / "selection.npz")
    record_path = work / RESULT_FILE
    if args.rejudge:  # a finished job folder of an earlier run: judged again, not rerun
        if not record_path.is_file():
            return DistillResult(name, False, "no finished job in --work")
        result = DistillResult(name, False, wall_s=json.loads(record_path.read_text()).get("wall_s", 0.0))
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(source), "--spec", spec_json]
        job = run_job([*command, "--work", str(work)], work / "job.log", args.timeout, args.max_rss_mb)
        result = DistillResult(name, False, wall_s=job.wall_s)
    if not args.rejudge and (job.killed_for or not record_path.is_file()):
        tail = (work / "job.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        result.note = f"{job.killed_for or f'exit {job.exit_code}'} (last: {_short(tail[0], 90)})"
        return result
    record = json.loads(record_path.read_text())
    if not record["ok"]:
        result.note = _short(record["error"])
        return result
    for key in (
        "prune_s",
        "distill_s",
        "parameters_ratio",
        "best_epoch",
        "epochs_run",
        "lr",
        "returned",
        "guard",
        "auto_hints",
        "s_per_epoch",
        "best_step",
        "steps",
        "checks",
        "fresh_copies",
        "loss_curve",
        "refit",
        "allocation",
        "backoffs",
    ):
        setattr(result, key, record.get(key))
    if record["pruned"] is None:
        result.note = _short(f"prune changed nothing: {record['prune_reason']}")
        return result
    eval_arrays = third_party_inputs.eval_set(name)
    feeds = list(third_party_inputs.feeds(eval_arrays, third_party_inputs.layout(name)))
    judgings = third_party.THIRD_PARTY_MODELS[name].outputs
    try:
        before: FidelityVerdict = judge_models(source, Path(record["pruned"]), feeds, judgings)
        after: FidelityVerdict = judge_models(source, Path(record["output"]), feeds, judgings)
    except Exception as exc:  # noqa: BLE001  (a model the judge cannot run is a result too)
        result.note = _short(f"judge cannot run it: {type(exc).__name__}: {exc}")
        return result
    result.ok = True
    result.before_sample, result.before_slice = before.worst_sample, before.worst_slice
    result.after_sample, result.after_slice, result.after_top1 = after.worst_sample, after.worst_slice, after.top1
    if result.best_epoch == 0:
        result.note = "no epoch beat the pruned weights"
    elif result.returned == "input":
        result.note = "guard: trained student not better on the selection data, pruned model returned"
    return result


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: list[DistillResult]) -> list[str]:
    lines = [
        "| model | params ratio | worst sample pruned → distilled | worst slice pruned → distilled | top-1 "
        "| best / run epochs | best / run steps | checks (backoffs) | s/epoch | hints | allocation | refit | prune s | distill s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        epochs = "-" if r.best_epoch is None else f"{r.best_epoch} / {r.epochs_run}"
        steps = "-" if r.best_step is None else f"{r.best_step} / {r.steps}"
        lines.append(
            f"| {r.name} | {_fmt(r.parameters_ratio, 3)} | {_fmt(r.before_sample)} → {_fmt(r.after_sample)} "
            f"| {_fmt(r.before_slice)} → {_fmt(r.after_slice)} | {_fmt(r.after_top1, 3)} | {epochs} | {steps} "
            f"| {'-' if r.checks is None else r.checks} ({r.backoffs or 0}) "
            f"| {_fmt(r.s_per_epoch, 1)} | {'-' if r.auto_hints is None else r.auto_hints} | {r.allocation or '-'} | {r.refit or '-'} | {_fmt(r.prune_s, 0)} | {_fmt(r.distill_s, 0)} | {r.note.replace('|', '/')} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: every third-party model)")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--allocation", choices=["sensitivity", "uniform"], default=None,
                        help="the prune step's per-group sparsity (default: the engine's, sensitivity)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4, help="samples (stacked: entries) per optimizer step")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the engine's)")
    parser.add_argument("--auto-hints", type=int, default=None, help="intermediate tensors matched (engine default)")
    parser.add_argument("--anchor", type=float, default=None, help="L2-SP pull toward the pruned weights (off)")
    parser.add_argument("--check-seconds", type=float, default=None, help="seconds between selection checks")
    parser.add_argument("--augment", type=int, default=None, help="mixed copies per train sample (engine default)")
    parser.add_argument("--no-fresh-copies", action="store_true", help="the same mixed copies every epoch")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="training time budget per model")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="unlabeled train inputs drawn like the calibration set (default: the calibration set "
                        "itself, 16-32 samples); the last fifth picks the best state")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=420.0, help="wall-time limit per job (prune + distill)")
    parser.add_argument("--max-rss-mb", type=float, default=6000.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="keep job folders here (default: a temp dir)")
    parser.add_argument("--rejudge", action="store_true", help="judge the finished job folders in --work again")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_main(args.child, args.spec, args.work)
        return
    names = [n for n in args.models.split(",") if n] or list(third_party.THIRD_PARTY_MODELS)
    unknown = sorted(set(names) - set(third_party.THIRD_PARTY_MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(third_party.THIRD_PARTY_MODELS)}")
    spec_json = json.dumps({"prune": _prune_spec(args), "distill": _distill_step(args)})
    load_start = uptime()
    print(f"load at start: {load_start}\nspec: {spec_json}; timeout {args.timeout:.0f} s per model", flush=True)
    results: list[DistillResult] = []
    with tempfile.TemporaryDirectory(prefix="distill_real_") as tmp:
        folder = args.work or Path(tmp)
        for name in names:
            result = bench_model(name, spec_json, folder, args)
            results.append(result)
            print(f"  {name}: {_fmt(result.before_sample)} → {_fmt(result.after_sample)} in {result.wall_s:.0f} s "
                  f"{result.note}", flush=True)  # fmt: skip
    print()
    print("\n".join(table(results)))
    reached = sum(r.reached for r in results)
    print(f"\nworst per-sample cosine >= {TARGET} after distill: {reached} of {len(results)} models "
          f"({100 * reached / max(len(results), 1):.0f}%); before distill: "
          f"{sum((r.before_sample or 0) >= TARGET for r in results)}")  # fmt: skip
    load_end = uptime()
    print(f"load at end: {load_end}")
    if args.json:
        payload = {"load_start": load_start, "load_end": load_end, "spec": json.loads(spec_json),
                   "results": [{**asdict(r), "reached": r.reached} for r in results]}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    main()
