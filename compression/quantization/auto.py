"""`auto`: try the modes that fit the graph, keep those within budget, return the fastest (or the input)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from compression.contract import PassContext
from compression.errors import CompressionError, JobCanceledError
from compression.metrics.evaluation import Evaluator
from compression.model_info import inspect_model
from compression.quantization.budget import Budget
from compression.quantization.config import (
    AutoQuantizeConfig,
    DynamicQuantizeConfig,
    Fp16QuantizeConfig,
    ModeConfig,
    StaticQuantizeConfig,
    WeightOnlyQuantizeConfig,
)
from compression.quantization.modes import make_quantizer
from compression.quantization.search import BudgetSearch, SearchResult
from compression.quantization.speed import confirmed_ratio, interleaved_latency

RECURRENT = {"LSTM", "GRU", "RNN"}
MATMUL_LIKE = {"MatMul", "Gemm", "Attention"}


def plan(model_path: Path, config: AutoQuantizeConfig, ctx: PassContext) -> tuple[list[ModeConfig], list[str]]:
    """Candidate mode configs for this graph, and why each default candidate was chosen or skipped."""
    ops = inspect_model(model_path).op_counts
    shared = {
        "nodes_to_exclude": config.nodes_to_exclude,
        "op_types_to_exclude": config.op_types_to_exclude,
        "max_accuracy_drop": config.max_accuracy_drop,
        "speed_guard": False,
    }
    has_calibration = ctx.datasets.calibration is not None or ctx.datasets.train is not None
    notes: list[str] = []
    wanted = config.candidates
    if wanted is None:
        wanted = []
        if "Conv" in ops and (has_calibration or config.synthetic_calibration):
            wanted.append("static")
            notes.append("static: the graph has Conv and calibration data is available")
        elif "Conv" in ops:
            notes.append("static skipped: no calibration dataset (set synthetic_calibration to allow it)")
        wanted.append("dynamic")
        notes.append("dynamic: int8 MatMul/recurrent kernels, int8 storage for Conv")
        if _largest_matmul_weight(model_path) >= ctx.settings.quantize.weight_only_min_elements:
            wanted.append("weight_only")
            notes.append("weight_only: the graph has large MatMul weights")
    configs: list[ModeConfig] = []
    for mode in dict.fromkeys(wanted):
        if mode == "static":
            configs.append(
                StaticQuantizeConfig(mode="static", synthetic_calibration=config.synthetic_calibration, **shared)
            )
        elif mode == "dynamic":
            configs.append(DynamicQuantizeConfig(mode="dynamic", **shared))
        elif mode == "weight_only":
            configs.append(WeightOnlyQuantizeConfig(mode="weight_only", **shared))
        elif mode == "fp16":
            configs.append(Fp16QuantizeConfig(mode="fp16", **shared))
    return configs, notes


def _largest_matmul_weight(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    sizes = {init.name: _elements(init.dims) for init in model.graph.initializer}
    return max(
        (sizes.get(name, 0) for node in model.graph.node if node.op_type in ("MatMul", "Gemm") for name in node.input),
        default=0,
    )


def _elements(dims: Any) -> int:
    total = 1
    for d in dims:
        total *= d
    return total


def run_auto(
    model_path: Path, config: AutoQuantizeConfig, ctx: PassContext, evaluator: Evaluator, work: Path
) -> tuple[Path | None, dict[str, Any]]:
    """The fastest candidate within budget and the decision record; None when the input is best."""
    configs, notes = plan(model_path, config, ctx)
    budget = Budget.from_settings(config.max_accuracy_drop, ctx.settings)
    results: list[SearchResult] = []
    table: list[dict[str, Any]] = []
    for index, mode_config in enumerate(configs):
        ctx.progress(0.1 + 0.7 * index / max(len(configs), 1), f"auto: trying {mode_config.mode}")
        quantizer = make_quantizer(mode_config, ctx, work / f"{index}_{mode_config.mode}")
        try:
            span = (0.1 + 0.7 * index / len(configs), 0.1 + 0.7 * (index + 1) / len(configs))
            search = BudgetSearch(quantizer, ctx, evaluator, budget, f"quantize_auto_{mode_config.mode}", span)
            result = search.run(model_path)
        except CompressionError as exc:
            table.append({"mode": mode_config.mode, "within_budget": False, "reasons": [exc.message]})
            continue
        except JobCanceledError:
            raise
        except Exception as exc:  # one candidate's library failure must not sink the others
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            table.append({"mode": mode_config.mode, "within_budget": False, "reasons": [reason]})
            ctx.event(f"auto: {mode_config.mode} failed, trying the other candidates", reason=reason)
            continue
        results.append(result)
        table.append(result.summary())
    ctx.check_canceled()
    ok = [r for r in results if r.ok]
    metrics: dict[str, Any] = {"mode": "auto", "plan": notes, "candidates": table, "budget": budget.model_dump()}
    if not ok:
        metrics["reason"] = "no candidate met the accuracy budget; returning the input model"
        return None, metrics
    ctx.progress(0.85, "auto: measuring latency against the input")
    stats = interleaved_latency([model_path, *(r.best.path for r in ok)], evaluator, ctx.settings)
    base = stats[0].median_ms
    metrics["input_latency_ms"] = base
    size_in = model_path.stat().st_size
    for result, stat in zip(ok, stats[1:], strict=True):
        row = next(row for row in table if row is not None and row.get("mode") == result.mode)
        row["latency_ms"] = stat.median_ms
        row["latency_ratio"] = stat.median_ms / base
        row["size_ratio"] = result.best.path.stat().st_size / size_in
    faster = [
        (stat.median_ms, result)
        for result, stat in zip(ok, stats[1:], strict=True)
        if stat.median_ms * ctx.settings.quantize.min_speedup < base
    ]
    if not faster:
        metrics["reason"] = "no candidate within budget is faster than the input model; returning the input model"
        return None, metrics
    latency, best = min(faster, key=lambda pair: pair[0])
    confirmed = confirmed_ratio(model_path, best.best.path, evaluator, ctx.settings)
    metrics["latency_ratio_confirmed"] = confirmed
    if confirmed * ctx.settings.quantize.min_speedup >= 1.0:
        metrics["reason"] = (
            f"{best.mode} looked faster but a longer run measured {confirmed:.3f}x the input's latency; "
            "returning the input model"
        )
        return None, metrics
    metrics.update(chosen=best.mode, latency_ratio=latency / base, **best.summary())
    metrics["mode"] = "auto"
    metrics["chosen"] = best.mode
    return best.best.path, metrics
