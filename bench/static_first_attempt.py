"""Static's first attempt on a third-party model under settings variants: what range refinement and bias correction
buy (budget metric per output, bias correction's output errors) and what they cost (phase seconds).

    .venv/bin/python bench/static_first_attempt.py ppocr_det \\
        '{"defaults": {}, "refine_all": {"quant_range_refinement_activation_mb": null}}'

Each variant runs `BudgetSearch.start` (prepare, quantize, evaluate; no exclusion search) with the model's
plausible calibration and eval sets (`model_zoo.third_party_inputs`); one JSON line per variant, with the load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression.contract import PassContext  # noqa: E402
from compression.datasets import DatasetBundle  # noqa: E402
from compression.model_info import inspect_model  # noqa: E402
from compression.quantization.budget import step_budget  # noqa: E402
from compression.quantization.config import StaticQuantizeConfig  # noqa: E402
from compression.quantization.modes import make_quantizer  # noqa: E402
from compression.quantization.search import BudgetSearch  # noqa: E402
from compression.settings import EngineSettings  # noqa: E402
from model_zoo import third_party, third_party_inputs  # noqa: E402


def run(name: str, variants: dict[str, dict], root: Path) -> None:
    src = Path(third_party.fetch(name))
    third_party_inputs.write_npz(third_party_inputs.calibration_set(name), root / "calibration.npz")
    third_party_inputs.write_npz(third_party_inputs.eval_set(name), root / "eval.npz")
    inputs = inspect_model(src).inputs
    for label, knobs in variants.items():
        settings = EngineSettings(**knobs)
        bundle = DatasetBundle.load({"calibration": root / "calibration.npz", "eval": root / "eval.npz"}, inputs)
        ctx = PassContext(work_dir=root / label / "w", original_model=src, datasets=bundle, settings=settings)
        evaluator = ctx.reference()
        config = StaticQuantizeConfig(mode="static", max_accuracy_drop=0.01, speed_guard=False)
        budget = step_budget(config.max_accuracy_drop, config.budget_metric, settings, evaluator)
        search = BudgetSearch(make_quantizer(config, ctx, root / label / "q"), ctx, evaluator, budget, "t")
        started = time.perf_counter()
        result = search.start(src)
        details = search.quantizer.details
        correction = details.get("bias_correction") or {}
        keys = ("samples", "kept", "output_error_before", "output_error_after", "not_run")
        print(
            json.dumps(
                {
                    "variant": label,
                    "first_attempt_s": round(time.perf_counter() - started, 1),
                    "budget_metric": {n: round(j.value, 4) for n, j in result.best.verdict.outputs.items()},
                    "seconds": {k: round(v, 1) for k, v in search.times.seconds.items()},
                    "activation_ranges": details.get("activation_ranges"),
                    "bias_correction": {k: correction.get(k) for k in keys},
                    "load": Path("/proc/loadavg").read_text().split()[0],
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a third-party model name (model_zoo.third_party.THIRD_PARTY_MODELS)")
    parser.add_argument("variants", help='JSON: {"label": {EngineSettings field: value}, ...}')
    parser.add_argument("--work", type=Path, default=None, help="keep the job folders here (default: a temp dir)")
    args = parser.parse_args()
    variants = json.loads(args.variants)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        run(args.model, variants, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="static_first_attempt_") as folder:
            run(args.model, variants, Path(folder))


if __name__ == "__main__":
    main()
