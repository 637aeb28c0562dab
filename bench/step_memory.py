"""Peak memory of the prune and distill steps on large-input real models with many calibration/train samples.

For each model and step, a child process runs one engine step on --samples unlabeled inputs drawn like the
model's calibration set (`model_zoo.third_party_inputs`): `prune` (structured 0.3, activation importance,
allocation, refit: the step's defaults otherwise) with them as calibration data, or `distill` (the model as its
own student, one short epoch of --batch-size samples per step) with them as train data. Peak RSS comes from the
child's VmHWM and os.wait4, and a child past --max-rss-mb is killed (the table says so). Run it from two trees to
compare them: the peak is what a worker needs for such a job.

    .venv/bin/python bench/step_memory.py [--models ppocr_det,nudenet_yolov8n] [--samples 64] [--steps prune,distill]
                                          [--batch-size 16] [--max-rss-mb 12000] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.real_models import READY_MARKER, LogProgress, run_job, uptime  # noqa: E402
from model_zoo import third_party, third_party_inputs  # noqa: E402

RESULT_FILE = "result.json"


def step_spec(step: str, batch_size: int) -> dict[str, Any]:
    if step == "prune":
        return {"type": "prune", "method": "structured", "sparsity": 0.3, "importance": "activation",
                "speed_check": False}  # fmt: skip
    return {"type": "distill", "epochs": 1, "batch_size": batch_size, "max_seconds": 20.0, "augment": 0}


def child_main(model: Path, step: str, batch_size: int, work: Path) -> None:
    started = time.perf_counter()
    record: dict[str, Any]
    try:
        if step == "distill":
            import torch  # noqa: F401  (imported before the marker, as a worker has it loaded)

        from compression.datasets import DatasetBundle
        from compression.model_info import inspect_model
        from compression.pipeline import run_pipeline
        from compression.spec import CompressionSpec

        print(READY_MARKER, flush=True)
        started = time.perf_counter()
        inputs = inspect_model(model).inputs
        data = work / "samples.npz"
        roles = {"calibration": data, "eval": work / "eval.npz"}
        if step == "distill":
            roles["train"] = data
        bundle = DatasetBundle.load(roles, inputs)
        spec = CompressionSpec.model_validate({"steps": [step_spec(step, batch_size)]})
        result = run_pipeline(model, spec, bundle, work / "job", LogProgress())
        record = {"ok": True, "changed": result.metrics.steps[0].changed}
    except BaseException as exc:  # noqa: BLE001  (a failing step is recorded, not fatal)
        record = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}"[:300],
            "traceback": traceback.format_exc()[-3000:],
        }
    record["seconds"] = time.perf_counter() - started
    (work / RESULT_FILE).write_text(json.dumps(record, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ppocr_det,nudenet_yolov8n")
    parser.add_argument("--samples", type=int, default=64, help="calibration (prune) or train (distill) samples")
    parser.add_argument("--steps", default="prune,distill")
    parser.add_argument("--batch-size", type=int, default=16, help="distill: samples per optimizer step")
    parser.add_argument("--max-rss-mb", type=float, default=12000.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_main(args.child, args.step, args.batch_size, args.work)
        return
    print(f"load at start: {uptime()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="step_memory_") as tmp:
        for name in [n for n in args.models.split(",") if n]:
            model = third_party.fetch(name)
            for step in [s for s in args.steps.split(",") if s]:
                work = Path(tmp) / f"{name}-{step}"
                work.mkdir()
                third_party_inputs.write_npz(
                    third_party_inputs.calibration_set(name, args.samples), work / "samples.npz"
                )
                third_party_inputs.write_npz(third_party_inputs.eval_set(name, 4), work / "eval.npz")
                command = [sys.executable, str(Path(__file__).resolve()), "--child", str(model), "--step", step,
                           "--batch-size", str(args.batch_size), "--work", str(work)]  # fmt: skip
                run = run_job(command, work / "job.log", args.timeout, args.max_rss_mb)
                result_path = work / RESULT_FILE
                record = json.loads(result_path.read_text()) if result_path.is_file() else {}
                outcome = run.killed_for or ("ok" if record.get("ok") else record.get("error", "no result"))
                rows.append((name, step, run.peak_rss_mb, run.wall_s, outcome))
                print(f"  {name} {step}: peak {run.peak_rss_mb:.0f} MB, {run.wall_s:.0f} s, {outcome}", flush=True)
    print("\n| model | step | samples | peak RSS MB | s | outcome |\n|---|---|---|---|---|---|")
    for name, step, peak, wall, outcome in rows:
        print(f"| {name} | {step} | {args.samples} | {peak:.0f} | {wall:.0f} | {outcome} |")
    print(f"\nload at end: {uptime()}")


if __name__ == "__main__":
    main()
