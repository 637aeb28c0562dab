"""Real-model bench: one engine job per third-party model, judged independently of the engine's metrics.

For every model of `model_zoo.third_party` (or those named with --models) the bench writes the model's
calibration and eval sets (`model_zoo.third_party_inputs`) to .npz files, as a user would upload them,
and runs the spec (default: quantize auto with a 1% budget) through `compression.pipeline.run_pipeline`
in a subprocess of its own: a crash, a hang past --timeout or memory past --max-rss-mb ends that job
alone and is recorded. Wall time (`wall s`) runs from the job's engine imports to its exit (the timeout too),
as the parent sees it (polled every 0.2 s); `job s` is `run_pipeline` alone, timed inside the job (the
.npz loading before it and the interpreter's exit after it are not counted, like the reference's);
peak RSS is the job process's (wait4 rusage, plus /proc sampling).

Then `bench/judge.py` compares the returned model with the input on the eval feeds with onnxruntime:
worst per-sample and per-slice fidelity, top-1 agreement where outputs are class scores, and the latency
ratio measured interleaved with its bootstrap 95% interval. Status per model:
  crashed            the job raised, died, or was killed (timeout / memory)
  unchanged          the engine returned the input (with the engine's reason)
  changed&clean      every judged figure >= --min-fidelity (top-1 >= --min-top1)
  changed&BROKEN     a changed model below those thresholds (or one that does not run)
"gained" counts clean models with size ratio <= 0.9 or latency ratio <= 0.95; "slower" counts changed
models whose latency interval lies entirely above 1.0.

Reference (unless --no-reference): in the same run, after the job and in a subprocess of its own like it,
onnxruntime's plain `quantize_static` (QDQ, its defaults, the same calibration .npz through a
CalibrationDataReader) on the input, then one latency comparison of its output against the input with the
engine's own measurement (the one `auto` runs, `compression.quantization.speed.measure_candidates`).
ref_s = quantize_static's time + that comparison's time (loading the .npz and the eval reference outputs the
comparison's Evaluator needs are not counted); job/ref = job_s / ref_s, both timed inside their process with
the same clock (the process-level wall time also counts the .npz loading, the interpreter's exit and the
parent's polling, up to ~0.5 s that the reference is not charged); "within 3x ref" counts the models with
job/ref <= 3. --competitor starts one CPU-bound process (a busy loop) for the whole
run, for the "another CPU-bound process shares the machine" case.

    .venv/bin/python bench/real_models.py [--models a,b] [--timeout 300] [--mode auto] [--spec JSON|@file]
                                          [--json out.json] [--competitor] [--no-reference]
    .venv/bin/python bench/real_models.py --merge a.json,b.json   # one table over shards run side by side

--json is rewritten after every model (with the load when the model started), so a run cut short keeps what
it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.judge import FidelityVerdict, compare_latency, judge_models  # noqa: E402
from model_zoo import third_party, third_party_inputs  # noqa: E402

RESULT_FILE = "result.json"
READY_MARKER = "== job started =="
STARTUP_LIMIT_S = 180.0  # interpreter start and imports, not counted in the job's wall time
POLL_S = 0.2
REF_FILE = "reference.json"
REF_FACTOR = 3.0  # issue #9: auto within 3x the reference's wall time


class Status(StrEnum):
    CRASHED = "crashed"
    UNCHANGED = "unchanged"
    CLEAN = "changed&clean"
    BROKEN = "changed&BROKEN"


@dataclass
class ModelResult:
    name: str
    status: Status
    note: str = ""
    wall_s: float = 0.0  # the job from engine imports done to exit (interpreter start is startup_s)
    job_s: float | None = None  # run_pipeline alone, timed inside the job (what ref_s is compared with)
    startup_s: float = 0.0
    killed_for: str = ""  # timeout / memory, when the bench ended the job
    peak_rss_mb: float = 0.0
    input_mb: float = 0.0
    size_ratio: float | None = None
    latency_ratio: float | None = None
    latency_low: float | None = None
    latency_high: float | None = None
    latency_rounds: int = 0
    worst_sample: float | None = None
    worst_slice: float | None = None
    top1: float | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)  # the engine's own figures, for comparison only
    # the reference: onnxruntime's plain quantize_static + one latency comparison (None: not run / failed)
    ref_s: float | None = None
    ref_quantize_s: float | None = None
    ref_latency_s: float | None = None
    ref_latency_ratio: float | None = None
    ref_peak_rss_mb: float = 0.0
    ref_note: str = ""

    @property
    def wall_per_ref(self) -> float | None:
        """job_s / ref_s (both timed in-process); a run without job_s (older --json files): wall_s / ref_s."""
        job = self.job_s if self.job_s is not None else self.wall_s
        return job / self.ref_s if self.ref_s else None

    @property
    def within_3x_ref(self) -> bool:
        ratio = self.wall_per_ref
        return ratio is not None and ratio <= REF_FACTOR

    @property
    def gained(self) -> bool:
        if self.status != Status.CLEAN:
            return False
        smaller = self.size_ratio is not None and self.size_ratio <= 0.9
        faster = self.latency_ratio is not None and self.latency_ratio <= 0.95
        return smaller or faster

    @property
    def slower(self) -> bool:
        return self.status in (Status.CLEAN, Status.BROKEN) and self.latency_low is not None and self.latency_low > 1.0


# --- the job, in its own process -------------------------------------------------------------------------


class LogProgress:
    """Progress sink printing each new stage with its time, so a killed job's log says where it was."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last = ""

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f} s] {text}", flush=True)

    def progress(self, fraction: float, message: str | None = None) -> None:
        if message and message != self.last:
            self.last = message
            self._print(f"{100 * fraction:3.0f}% {message}")

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self._print(f"event: {message}")

    def check_canceled(self) -> None:
        pass


def child_main(model: Path, spec_json: str, work: Path) -> None:
    """Run the spec on `model` with the npz datasets in `work`; write result.json (also on failure)."""
    record: dict[str, Any]
    started = time.perf_counter()
    try:
        from compression.datasets import DatasetBundle
        from compression.jsonable import to_jsonable
        from compression.model_info import inspect_model
        from compression.pipeline import run_pipeline
        from compression.spec import CompressionSpec

        print(READY_MARKER, flush=True)  # imports done: the parent's timeout clock starts here
        started = time.perf_counter()
        spec = CompressionSpec.model_validate(json.loads(spec_json))
        inputs = inspect_model(model).inputs
        bundle = DatasetBundle.load({"calibration": work / "calibration.npz", "eval": work / "eval.npz"}, inputs)
        pipeline_started = time.perf_counter()
        result = run_pipeline(model, spec, bundle, work / "job", LogProgress())
        job_s = time.perf_counter() - pipeline_started
        metrics = to_jsonable(result.metrics)
        steps = metrics["steps"]
        changed = any(step["changed"] for step in steps)
        reasons = [str(step["details"].get("reason", "")) for step in steps if not step["changed"]]
        chosen = [str(step["details"].get("chosen", "")) for step in steps if step["changed"]]
        record = {
            "ok": True,
            "job_s": job_s,
            "changed": changed,
            "output": str(result.model_path),
            "reason": "; ".join(r for r in reasons if r) or ("" if changed else "no reason given"),
            "chosen": "; ".join(c for c in chosen if c),
            "engine": {
                "ratios": metrics["ratios"],
                "top1_agreement": metrics["fidelity"].get("top1_agreement"),
                "steps": [{"type": s["type"], "changed": s["changed"], "details": s["details"]} for s in steps],
            },
        }
    except BaseException as exc:  # noqa: BLE001  (every failure is this job's result)
        record = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
    record["wall_s"] = time.perf_counter() - started
    (work / RESULT_FILE).write_text(json.dumps(record, indent=1, default=str))


def ref_child_main(model: Path, work: Path) -> None:
    """The reference: plain quantize_static of `model` + one engine latency comparison; write reference.json."""
    record: dict[str, Any]
    try:
        from onnxruntime.quantization import QuantFormat, quantize_static

        from compression.datasets import DatasetBundle
        from compression.metrics.evaluation import Evaluator
        from compression.model_info import inspect_model
        from compression.quantization.calibration import DatasetReader
        from compression.quantization.config import AutoQuantizeConfig
        from compression.quantization.speed import measure_candidates
        from compression.settings import EngineSettings

        print(READY_MARKER, flush=True)
        settings = EngineSettings()
        inputs = inspect_model(model).inputs
        bundle = DatasetBundle.load({"calibration": work / "calibration.npz", "eval": work / "eval.npz"}, inputs)
        assert bundle.calibration is not None and bundle.eval is not None
        output = work / "reference_static.onnx"
        reader = DatasetReader(bundle.calibration, bundle.calibration.n_samples)  # a CalibrationDataReader
        started = time.perf_counter()
        quantize_static(model, output, reader, quant_format=QuantFormat.QDQ)  # otherwise onnxruntime's defaults
        quantize_s = time.perf_counter() - started
        evaluator = Evaluator(model, bundle.eval, settings)  # the feed and batch auto's comparison uses
        objective = AutoQuantizeConfig(mode="auto").objective
        started = time.perf_counter()
        comparison = measure_candidates(model, [output], evaluator, objective, settings)
        latency_s = time.perf_counter() - started
        record = {
            "ok": True,
            "quantize_s": quantize_s,
            "latency_s": latency_s,
            "latency_ratio": comparison.ratios[0].ratio,
        }
    except BaseException as exc:  # noqa: BLE001  (a failing reference is recorded, not fatal)
        record = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    (work / REF_FILE).write_text(json.dumps(record, indent=1, default=str))


# --- the parent: start, watch, judge ---------------------------------------------------------------------


@dataclass
class JobRun:
    exit_code: int | None
    killed_for: str | None
    wall_s: float  # from the child's READY_MARKER (imports done) to its exit
    startup_s: float
    peak_rss_mb: float


def _rss_mb(pid: int, field_name: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _ready(log: Path) -> bool:
    try:
        with log.open("rb") as handle:
            return READY_MARKER.encode() in handle.read(1 << 16)
    except OSError:
        return False


def run_job(command: list[str], log: Path, timeout_s: float, max_rss_mb: float) -> JobRun:
    """Start the job in a new session; kill it (by its own group id) on timeout or memory; measure it.

    The timeout counts from the moment the job has imported the engine (it prints READY_MARKER), so a
    loaded machine's slow interpreter start is not charged to the engine; the start itself is capped.
    """
    launched = time.perf_counter()
    with log.open("w") as out:
        # cwd = the job's folder: onnxruntime's quantization tools drop temp files (*.data, shape-inference
        # models) in the working directory and leave them behind when a job is killed
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent
        )
    sampled, killed_for, ready_at = 0.0, None, None
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            break
        now = time.perf_counter()
        if ready_at is None and _ready(log):
            ready_at = now
        sampled = max(sampled, _rss_mb(process.pid, "VmHWM"))
        if ready_at is None and now - launched > STARTUP_LIMIT_S:
            killed_for = f"no start within {STARTUP_LIMIT_S:.0f} s"
        elif ready_at is not None and now - ready_at > timeout_s:
            killed_for = f"timeout after {timeout_s:.0f} s"
        elif _rss_mb(process.pid, "VmRSS") > max_rss_mb:
            killed_for = f"memory above {max_rss_mb:.0f} MB"
        if killed_for is not None:
            os.killpg(process.pid, signal.SIGKILL)  # the group this job's process leads, nothing else
            _, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(POLL_S)
    ended = time.perf_counter()
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = max(sampled, usage.ru_maxrss / 1024.0)  # ru_maxrss is in KiB on Linux
    start = ready_at if ready_at is not None else ended
    return JobRun(process.returncode, killed_for, ended - start, start - launched, peak)


def _short(text: str, limit: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_reference(source: Path, work: Path, result: ModelResult, args: argparse.Namespace) -> None:
    """Time the reference on `source` in a subprocess and put its figures into `result`."""
    command = [sys.executable, str(Path(__file__).resolve()), "--ref-child", str(source.resolve())]
    command += ["--work", str(work.resolve())]
    (work / REF_FILE).unlink(missing_ok=True)
    job = run_job(command, work / "reference.log", args.timeout, args.max_rss_mb)
    result.ref_peak_rss_mb = job.peak_rss_mb
    record_path = work / REF_FILE
    if job.killed_for or not record_path.is_file():
        result.ref_note = job.killed_for or f"process exited {job.exit_code}"
        return
    record = json.loads(record_path.read_text())
    if not record["ok"]:
        result.ref_note = _short(record["error"], 90)
        return
    result.ref_quantize_s, result.ref_latency_s = record["quantize_s"], record["latency_s"]
    result.ref_s = record["quantize_s"] + record["latency_s"]
    result.ref_latency_ratio = record["latency_ratio"]


def bench_model(name: str, spec_json: str, folder: Path, args: argparse.Namespace) -> ModelResult:
    try:
        source = third_party.fetch(name)
    except third_party.ThirdPartyUnavailable as exc:
        return ModelResult(name, Status.CRASHED, f"unavailable: {_short(str(exc))}")
    result = judge_job(name, source, spec_json, folder, args)
    if not args.no_reference:
        run_reference(source, folder / name, result, args)
    return result


def judge_job(name: str, source: Path, spec_json: str, folder: Path, args: argparse.Namespace) -> ModelResult:
    work = folder / name
    work.mkdir(parents=True, exist_ok=True)
    third_party_inputs.write_npz(third_party_inputs.calibration_set(name), work / "calibration.npz")
    eval_arrays = third_party_inputs.eval_set(name)
    third_party_inputs.write_npz(eval_arrays, work / "eval.npz")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(source.resolve()), "--spec", spec_json]
    command += ["--work", str(work.resolve())]
    job = run_job(command, work / "job.log", args.timeout, args.max_rss_mb)
    result = ModelResult(name, Status.CRASHED, wall_s=job.wall_s, startup_s=job.startup_s, peak_rss_mb=job.peak_rss_mb)
    result.killed_for = job.killed_for or ""
    result.input_mb = source.stat().st_size / 1e6
    record_path = work / RESULT_FILE
    if job.killed_for or not record_path.is_file():
        tail = (work / "job.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        result.note = f"{job.killed_for} (last: {_short(tail[0], 90)})" if job.killed_for else ""
        result.note = result.note or f"process exited {job.exit_code}: {_short(tail[0])}"
        return result
    record = json.loads(record_path.read_text())
    if not record["ok"]:
        result.note = _short(record["error"])
        return result
    result.job_s = record.get("job_s")
    result.engine = record["engine"]
    if not record["changed"]:
        result.status, result.note = Status.UNCHANGED, _short(record["reason"])
        result.size_ratio = 1.0
        return result
    output = Path(record["output"])
    result.size_ratio = output.stat().st_size / source.stat().st_size
    result.note = _short(f"chose {record['chosen']}" if record["chosen"] else "")
    layout = third_party_inputs.layout(name)
    feeds = list(third_party_inputs.feeds(eval_arrays, layout))
    try:
        verdict: FidelityVerdict = judge_models(source, output, feeds, third_party.THIRD_PARTY_MODELS[name].outputs)
        latency = compare_latency(source, output, feeds[0], budget_s=args.latency_budget)
    except Exception as exc:  # noqa: BLE001  (a model the judge cannot run is broken)
        result.status, result.note = Status.BROKEN, _short(f"does not run: {type(exc).__name__}: {exc}")
        return result
    result.worst_sample, result.worst_slice, result.top1 = verdict.worst_sample, verdict.worst_slice, verdict.top1
    result.outputs = [asdict(o) for o in verdict.outputs]
    result.latency_ratio, result.latency_low, result.latency_high = latency.ratio, latency.low, latency.high
    result.latency_rounds = latency.rounds
    result.status = Status.CLEAN if verdict.clean(args.min_fidelity, args.min_top1) else Status.BROKEN
    return result


# --- report -------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: list[ModelResult]) -> list[str]:
    lines = [
        "| model | MB | status | size ratio | latency ratio [95% CI] | worst sample | worst slice | top-1 "
        "| wall s | job s | ref s | job/ref | peak RSS MB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        latency = "-"
        if r.latency_ratio is not None:
            latency = f"{r.latency_ratio:.3f} [{r.latency_low:.3f}, {r.latency_high:.3f}]"
        lines.append(
            f"| {r.name} | {r.input_mb:.1f} | {r.status} | {_fmt(r.size_ratio)} | {latency} | "
            f"{_fmt(r.worst_sample, 4)} | {_fmt(r.worst_slice, 4)} | {_fmt(r.top1)} | {r.wall_s:.1f} | {_fmt(r.job_s, 1)} | "
            f"{_fmt(r.ref_s, 1)} | {_fmt(r.wall_per_ref, 2)} | {r.peak_rss_mb:.0f} | {_note(r).replace('|', '/')} |"
        )
    return lines


def _note(r: ModelResult) -> str:
    return f"{r.note}; reference: {r.ref_note}" if r.ref_note else r.note


def counts(results: list[ModelResult]) -> str:
    by = {s: sum(r.status == s for r in results) for s in Status}
    timeouts = sum(r.killed_for.startswith("timeout") for r in results)
    memory = sum(r.killed_for.startswith("memory") for r in results)
    return (
        f"models {len(results)}: crashed {by[Status.CRASHED]} (timeouts {timeouts}, memory kills {memory}), "
        f"returned unchanged {by[Status.UNCHANGED]}, "
        f"changed and clean {by[Status.CLEAN]}, changed and BROKEN {by[Status.BROKEN]}, "
        f"gained {sum(r.gained for r in results)}, slower beyond the interval {sum(r.slower for r in results)}, "
        f"within {REF_FACTOR:.0f}x ref {sum(r.within_3x_ref for r in results)} "
        f"(of {sum(r.ref_s is not None for r in results)} with a reference)"
    )


def merge(paths: list[Path]) -> None:
    """One table and one count line over the results of several --json files (e.g. shards run side by side)."""
    known = {f.name for f in fields(ModelResult)}
    by_name: dict[str, ModelResult] = {}  # a model run again in a later file: the later run counts
    for path in paths:
        payload = json.loads(path.read_text())
        competitor = "; with a CPU-bound competitor" if payload.get("competitor") else ""
        print(
            f"{path.name}: load at start {payload['load_start']}; at end {payload.get('load_end') or 'cut short'}"
            f"{competitor}"
        )
        for row in payload["results"]:
            values = {key: value for key, value in row.items() if key in known}
            values["status"] = Status(values["status"])
            by_name[values["name"]] = ModelResult(**values)
    results = list(by_name.values())
    print()
    print("\n".join(table(results)))
    print()
    print(counts(results))


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return Path("/proc/loadavg").read_text().strip()


def start_competitor() -> subprocess.Popen[bytes]:
    """One CPU-bound process (a pure-Python busy loop) in a session of its own."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)


@contextlib.contextmanager
def stop_at_exit(process: subprocess.Popen[bytes] | None) -> Iterator[None]:
    try:
        yield
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGKILL)  # the group this process leads, nothing else
            process.wait()


def default_spec(mode: str) -> str:
    return json.dumps({"steps": [{"type": "quantize", "mode": mode, "max_accuracy_drop": 0.01}]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: every third-party model)")
    parser.add_argument("--timeout", type=float, default=300.0, help="wall-time limit per job, seconds")
    parser.add_argument("--max-rss-mb", type=float, default=8000.0, help="kill a job whose RSS passes this")
    parser.add_argument("--mode", default="auto", help="quantize mode of the default spec")
    parser.add_argument("--spec", default=None, help="a spec as JSON, or @path to a JSON file (overrides --mode)")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument("--latency-budget", type=float, default=8.0, help="seconds per latency comparison")
    parser.add_argument("--min-fidelity", type=float, default=0.98, help="clean: worst sample/slice at least this")
    parser.add_argument("--min-top1", type=float, default=0.99, help="clean: top-1 agreement at least this")
    parser.add_argument("--work", type=Path, default=None, help="keep job folders here (default: a temp dir)")
    parser.add_argument(
        "--merge",
        default="",
        help="comma-separated --json files of earlier runs (shards): one table of them; a model in several: the last",
    )
    parser.add_argument(
        "--competitor", action="store_true", help="run one CPU-bound process (a busy loop) for the whole run"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the quantize_static reference per model")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ref-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge:
        merge([Path(p) for p in args.merge.split(",") if p])
        return
    if args.child is not None:
        child_main(args.child, args.spec, args.work)
        return
    if args.ref_child is not None:
        ref_child_main(args.ref_child, args.work)
        return
    spec_json = args.spec or default_spec(args.mode)
    if spec_json.startswith("@"):
        spec_json = Path(spec_json[1:]).read_text()
    spec_json = json.dumps(json.loads(spec_json))
    names = [n for n in args.models.split(",") if n] or list(third_party.THIRD_PARTY_MODELS)
    unknown = sorted(set(names) - set(third_party.THIRD_PARTY_MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(third_party.THIRD_PARTY_MODELS)}")
    load_start = uptime()
    print(f"load at start: {load_start}")
    print(f"spec: {spec_json}; timeout {args.timeout:.0f} s; judge: worst per-sample/per-slice >= {args.min_fidelity}")
    print(
        "latency: first eval feed (one sample or one stacked entry), 1 thread, interleaved ABBA rounds, "
        "median of per-round ratios with a bootstrap 95% interval"
    )
    results: list[ModelResult] = []
    loads: dict[str, str] = {}

    def write_json(load_end: str | None) -> None:  # after every model, so a cut-short run keeps what it measured
        if not args.json:
            return
        payload = {
            "load_start": load_start,
            "load_end": load_end,
            "load_per_model": loads,
            "spec": json.loads(spec_json),
            "competitor": args.competitor,
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": [
                {
                    **asdict(r),
                    "gained": r.gained,
                    "slower": r.slower,
                    "wall_per_ref": r.wall_per_ref,
                    "within_3x_ref": r.within_3x_ref,
                }
                for r in results
            ],
        }
        args.json.write_text(json.dumps(payload, indent=1, default=str))

    competitor = start_competitor() if args.competitor else None
    if competitor is not None:
        print(f"competitor: one CPU-bound busy loop, pid {competitor.pid}")
    with tempfile.TemporaryDirectory(prefix="real_models_") as tmp, stop_at_exit(competitor):
        folder = args.work or Path(tmp)
        for name in names:
            loads[name] = uptime()
            result = bench_model(name, spec_json, folder, args)
            results.append(result)
            print(
                f"  {name}: {result.status} in {result.wall_s:.1f} s (run_pipeline {_fmt(result.job_s, 1)} s), "
                f"{result.peak_rss_mb:.0f} MB {result.note} "
                f"(reference {_fmt(result.ref_s, 1)} s {result.ref_note}; load at start: {loads[name]})"
            )
            sys.stdout.flush()
            write_json(None)
    print()
    print("\n".join(table(results)))
    print()
    print(counts(results))
    load_end = uptime()
    print(f"load at end: {load_end}")
    write_json(load_end)


if __name__ == "__main__":
    main()
