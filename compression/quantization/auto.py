"""`auto`: try the modes that fit the graph, keep those within budget, return the one the objective picks.

Every candidate within budget (for the size objectives: every one smaller than the input) is timed against
the input in one adaptive interleaved measurement; compression/quantization/objective.py picks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from compression.contract import PassContext
from compression.errors import CompressionError, JobCanceledError
from compression.metrics.evaluation import Evaluator
from compression.model_info import inspect_model
from compression.quantization.budget import step_budget
from compression.quantization.config import (
    FLOAT_COMPUTE_MODES,
    AutoQuantizeConfig,
    DynamicQuantizeConfig,
    Fp16QuantizeConfig,
    Fp16WeightsQuantizeConfig,
    Int8WeightsQuantizeConfig,
    ModeConfig,
    Objective,
    StaticQuantizeConfig,
    WeightOnlyQuantizeConfig,
)
from compression.quantization.fusion import worth_fusing
from compression.quantization.modes import make_quantizer
from compression.quantization.objective import Option, choose
from compression.quantization.search import BudgetSearch, SearchResult
from compression.quantization.speed import SpeedVerdict, latency_facts, measure_candidates, speed_verdict
from compression.quantization.timing import SearchClock

RECURRENT = {"LSTM", "GRU", "RNN"}
MATMUL_LIKE = {"MatMul", "Gemm", "Attention"}


def plan(model_path: Path, config: AutoQuantizeConfig, ctx: PassContext) -> tuple[list[ModeConfig], list[str]]:
    """Candidate mode configs for this graph, and why each default candidate was chosen or skipped."""
    ops = inspect_model(model_path).op_counts
    shared = {
        "nodes_to_exclude": config.nodes_to_exclude,
        "op_types_to_exclude": config.op_types_to_exclude,
        "max_accuracy_drop": config.max_accuracy_drop,
        "budget_metric": config.budget_metric,
        "objective": config.objective,
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
        if config.objective == Objective.LATENCY:
            notes.append(
                "int8_weights and fp16_weights skipped: objective 'latency' and both compute in float from weights "
                "folded at load, the input's own kernels, so they are never faster"
            )
        else:
            wanted += ["int8_weights", "fp16_weights"]
            notes.append(
                "int8_weights: every weight stored int8 with float compute (weight rounding error only; bodies "
                "included)"
            )
            notes.append("fp16_weights: every weight stored float16 with float compute (half the size, tiny error)")
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
        elif mode == "int8_weights":
            configs.append(Int8WeightsQuantizeConfig(mode="int8_weights", **shared))
        elif mode == "fp16_weights":
            configs.append(Fp16WeightsQuantizeConfig(mode="fp16_weights", **shared))
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


FIRST_ATTEMPTS = (0.1, 0.45)  # the step's progress while every candidate makes its first attempt
SEARCHES = (0.45, 0.8)  # ... while the searches go on, in the order they run


def _span(phase: tuple[float, float], index: int, count: int) -> tuple[float, float]:
    """The `index`-th of `count` equal parts of a phase's progress range."""
    low, high = phase
    width = (high - low) / max(count, 1)
    return low + width * index, low + width * (index + 1)


def _guarded(
    ctx: PassContext, by_mode: dict[str, dict[str, Any]], mode: str, step: Callable[..., SearchResult], *args: Any
) -> SearchResult | None:
    """One candidate's search step; its failure becomes that candidate's row, not the job's."""
    try:
        return step(*args)
    except CompressionError as exc:
        by_mode[mode] = {"mode": mode, "within_budget": False, "reasons": [exc.message]}
    except JobCanceledError:
        raise
    except Exception as exc:  # one candidate's library failure must not sink the others
        reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        by_mode[mode] = {"mode": mode, "within_budget": False, "reasons": [reason]}
        ctx.event(f"auto: {mode} failed, trying the other candidates", reason=reason)
    return None


def _smaller_storage_met(mode: str, started: list[BudgetSearch], objective: Objective) -> bool:
    """fp16_weights is not worth an attempt once int8_weights met the budget on its first attempt: both compute
    in float from folded weights, and int8 is half the size (only the latency objective could still pick it)."""
    if mode != "fp16_weights" or objective == Objective.LATENCY:
        return False
    return any(search.quantizer.config.mode == "int8_weights" and search.first_ok for search in started)


def _dominated(
    own: int, started: list[BudgetSearch], objective: Objective, size_tie: float, skip: BudgetSearch | None = None
) -> str:
    """Why a model of `own` bytes that missed the budget cannot be chosen, or "": a weight-storage candidate (float
    compute from folded weights: the input's speed, so not clearly slower) met the budget at once and is smaller
    than `own` by more than `size_tie` (the 'balanced' objective's margin for equally small candidates), so the
    objectives 'size' and 'balanced' cannot pick it. `skip`: the search asking (not compared with itself)."""
    if objective == Objective.LATENCY:
        return ""
    for other in started:
        size = other.first_bytes
        storage = other.quantizer.config.mode in FLOAT_COMPUTE_MODES
        if storage and other is not skip and other.first_ok and size is not None and own > size * (1.0 + size_tie):
            return f"{other.quantizer.config.mode} met the budget at once at {size / own:.2f}x the size"
    return ""


def _cannot_be_chosen(search: BudgetSearch, started: list[BudgetSearch], objective: Objective, size_tie: float) -> str:
    """Why the search of a candidate that missed the budget on its first attempt cannot change the choice, or "".

    Its search only keeps nodes float, which adds bytes: its first attempt is the smallest model it can return.
    Once a weight-storage candidate met the budget at once and is smaller than that by more than `size_tie`,
    the objectives 'size' and 'balanced' cannot pick it (`_dominated`).
    """
    own = search.first_bytes
    if search.first_ok or own is None:
        return ""
    why = _dominated(own, started, objective, size_tie, skip=search)
    return f"{why} of this candidate's first attempt, which keeping nodes float only grows" if why else ""


def _met_but_cannot_be_chosen(
    search: BudgetSearch, started: list[BudgetSearch], objective: Objective, size_tie: float
) -> str:
    """Why a candidate that met the budget at once cannot be chosen, or "": what is left of its search (the
    information-only sensitivity ranking, static's Conv-layout timing) cannot change the choice either."""
    own = search.first_bytes
    if not search.first_ok or own is None:
        return ""
    why = _dominated(own, started, objective, size_tie, skip=search)
    return f"{why} of this candidate" if why else ""


def first_attempt_order(configs: list[ModeConfig], storage_early: bool) -> list[tuple[int, ModeConfig]]:
    """(plan index, config) in the order the first attempts run: the plan order, or with `storage_early` the
    weight-storage candidates right after static (cheap: no calibration, no tuning), so dynamic's first attempt
    knows whether one of them met the budget and can skip its transformer-fusion timing when no variant could
    be chosen (`ModeQuantizer.cannot_be_chosen`). Static stays first, so the process's first-use costs still
    fall on the candidate whose first attempt is the most expensive anyway: the searches run cheapest first
    attempt first, and candidates a tenth of a second apart would otherwise swap places (silero_vad returned
    fp16_weights when int8_weights' first attempt came first). Which model each first attempt returns does not
    depend on the order."""
    indexed = list(enumerate(configs))
    if not storage_early:
        return indexed
    static = [item for item in indexed if item[1].mode == "static"]
    storage = [item for item in indexed if item[1].mode in FLOAT_COMPUTE_MODES]
    return static + storage + [item for item in indexed if item not in static and item not in storage]


def _fusion_will_be_tuned(model_path: Path, configs: list[ModeConfig], ctx: PassContext) -> bool:
    """dynamic is planned and its first attempt will quantize, judge and time transformer-fusion variants."""
    dynamic = next((c for c in configs if c.mode == "dynamic"), None)
    if dynamic is None or not ctx.settings.quantize.transformer_fusion:
        return False
    return worth_fusing(model_path, dynamic.nodes_to_exclude, dynamic.op_types_to_exclude) is None


def timing_plan(sizes: dict[str, float], objective: Objective, size_tie: float) -> tuple[list[str], list[str]]:
    """(modes to time now, modes that cannot be chosen while the smallest of those is not clearly slower).

    Under 'size' and 'balanced' only the candidates within `size_tie` of the smallest can be picked as long as
    the smallest is not clearly slower ('size': the equally small ones); 'latency' picks the fastest: all."""
    if objective == Objective.LATENCY or not sizes:
        return list(sizes), []
    tie = size_tie if objective == Objective.BALANCED else 0.0
    smallest = min(sizes.values())
    now = [mode for mode, size in sizes.items() if size <= smallest * (1.0 + tie)]
    return now, [mode for mode in sizes if mode not in now]


def later_needed(
    sizes: dict[str, float], later: list[str], not_slower: list[str], objective: Objective, size_tie: float
) -> bool:
    """The candidates left untimed might be chosen after all: the smallest not-clearly-slower timed candidate
    (if any) does not rule them out by size."""
    if not later:
        return False
    if not not_slower:
        return True
    tie = size_tie if objective == Objective.BALANCED else 0.0
    bound = min(sizes[mode] for mode in not_slower) * (1.0 + tie)
    return any(sizes[mode] <= bound for mode in later)


COST_TIER = 2.0  # first attempts within this factor of each other count as equally cheap


def search_order(started: list[BudgetSearch]) -> list[BudgetSearch]:
    """The order the searches run in once every candidate has had its first attempt.

    Cheapest first, so the time bound (quant_search_time_factor) falls on the expensive ones; those met at once
    go last (their sensitivity ranking is information only). First attempts whose costs are within COST_TIER of
    each other are a tie whatever the load: they go closest to the budget first (`Verdict.miss`, which does not
    depend on the load), then in plan order. Ordering near ties by measured time made silero_vad's result a
    coin toss between int8_weights (0.45x, when its search ran first) and fp16_weights (0.51x).
    """
    tier_of: dict[int, int] = {}
    for group in (False, True):
        tier, tier_start = -1, 0.0
        for search in sorted((s for s in started if s.first_ok == group), key=lambda s: s.first_attempt_s):
            if tier < 0 or search.first_attempt_s > COST_TIER * tier_start:
                tier, tier_start = tier + 1, search.first_attempt_s
            tier_of[id(search)] = tier
    plan = {id(search): index for index, search in enumerate(started)}
    return sorted(started, key=lambda s: (s.first_ok, tier_of[id(s)], s.first_miss, plan[id(s)]))


def run_auto(
    model_path: Path, config: AutoQuantizeConfig, ctx: PassContext, evaluator: Evaluator, work: Path
) -> tuple[Path | None, dict[str, Any]]:
    """The candidate within budget that `config.objective` picks, and the decision record; None: the input."""
    configs, notes = plan(model_path, config, ctx)
    budget = step_budget(config.max_accuracy_drop, config.budget_metric, ctx.settings, evaluator)
    results: list[SearchResult] = []
    by_mode: dict[str, dict[str, Any]] = {}
    knobs = ctx.settings.quantize
    clock = SearchClock(knobs.search_time_factor, knobs.search_time_min_s)  # one bound over every candidate's search
    started: list[BudgetSearch] = []
    tie = knobs.size_tie
    storage_early = _fusion_will_be_tuned(model_path, configs, ctx)
    for position, (index, mode_config) in enumerate(first_attempt_order(configs, storage_early)):
        if _smaller_storage_met(mode_config.mode, started, config.objective):
            by_mode[mode_config.mode] = {
                "mode": mode_config.mode,
                "within_budget": False,
                "reasons": ["not tried: int8_weights met the budget, smaller at the same float compute"],
            }
            continue
        span = _span(FIRST_ATTEMPTS, position, len(configs))  # progress only moves forward: spans in run order
        ctx.progress(span[0], f"auto: trying {mode_config.mode}")
        quantizer = make_quantizer(mode_config, ctx, work / f"{index}_{mode_config.mode}")
        quantizer.cannot_be_chosen = lambda size: _dominated(size, started, config.objective, tie)
        search = BudgetSearch(quantizer, ctx, evaluator, budget, f"quantize_auto_{mode_config.mode}", span, clock)
        if _guarded(ctx, by_mode, mode_config.mode, search.start, model_path) is not None:
            started.append(search)
    for index, search in enumerate(search_order(started)):
        mode = search.quantizer.config.mode
        search.progress = _span(SEARCHES, index, len(started))  # progress only moves forward: a span per pass
        ctx.progress(search.progress[0], f"auto: searching {mode}")
        dominated = _cannot_be_chosen(search, started, config.objective, tie)
        met_dominated = _met_but_cannot_be_chosen(search, started, config.objective, tie)
        if dominated:
            notes.append(f"{mode}: search not continued after its first attempt: {dominated}")
        if met_dominated:
            notes.append(
                f"{mode}: met the budget at once; no sensitivity ranking or layout timing, it cannot be chosen: "
                f"{met_dominated}"
            )
        result = _guarded(ctx, by_mode, mode, search.skip if dominated or met_dominated else search.finish)
        if result is not None:
            results.append(result)
            by_mode[mode] = result.summary()
            if dominated:
                by_mode[mode]["reasons"] = [*by_mode[mode]["reasons"], f"search not continued: {dominated}"]
            if met_dominated:
                by_mode[mode]["cannot_be_chosen"] = met_dominated
    table = [by_mode[c.mode] for c in configs if c.mode in by_mode]  # in plan order
    ctx.check_canceled()
    ok = [r for r in results if r.ok]
    metrics: dict[str, Any] = {
        "mode": "auto",
        "objective": config.objective.value,
        "plan": notes,
        "candidates": table,
        "budget": budget.model_dump(),
        "search_time": clock.summary(),
    }
    if not ok:
        metrics["reason"] = "no candidate met the accuracy budget; returning the input model"
        return None, metrics
    size_in = model_path.stat().st_size
    rows = {result.mode: next(row for row in table if row.get("mode") == result.mode) for result in ok}
    for result in ok:
        assert result.best.path is not None
        rows[result.mode]["size_ratio"] = result.best.path.stat().st_size / size_in
    if config.objective == Objective.LATENCY:  # float compute runs the input's kernels: nothing to time
        timed = [r for r in ok if r.mode not in FLOAT_COMPUTE_MODES]
        for result in ok:
            if result.mode in FLOAT_COMPUTE_MODES:
                rows[result.mode]["reasons"] = [
                    *rows[result.mode].get("reasons", []),
                    "not timed under objective 'latency': float compute from folded weights is never faster",
                ]
    else:
        timed = [r for r in ok if rows[r.mode]["size_ratio"] < 1.0]
    if not timed:
        sizes = ", ".join(f"{r.mode} {rows[r.mode]['size_ratio']:.3f}x" for r in ok)
        why = (
            "no candidate within budget computes other than in float, so none can be faster"
            if config.objective == Objective.LATENCY
            else "no candidate within budget is smaller than the input"
        )
        metrics["reason"] = f"objective '{config.objective.value}': {why} ({sizes}); returning the input model"
        return None, metrics
    ctx.progress(0.85, "auto: measuring latency against the input")
    measuring = time.perf_counter()
    sizes = {r.mode: rows[r.mode]["size_ratio"] for r in timed}
    now, later = timing_plan(sizes, config.objective, tie)
    options = _time_candidates(model_path, [r for r in timed if r.mode in now], rows, evaluator, config, ctx, metrics)
    not_slower = [mode for mode, option in options.items() if option.verdict != SpeedVerdict.SLOWER]
    if later_needed(sizes, later, not_slower, config.objective, tie):  # the smallest ones were clearly slower
        rest = [r for r in timed if r.mode in later]
        options.update(_time_candidates(model_path, rest, rows, evaluator, config, ctx, metrics))
        metrics["latency_second_measurement"] = True
    else:
        smallest = min(now, key=lambda mode: sizes[mode])
        for mode in later:
            rows[mode]["reasons"] = [
                *rows[mode].get("reasons", []),
                f"not timed: more than quant_size_tie larger than {smallest} ({sizes[smallest]:.3f}x), which is "
                "not clearly slower, so it cannot be chosen",
            ]
    metrics["latency_comparison_s"] = round(time.perf_counter() - measuring, 3)
    metrics["latency_timed"] = [mode for mode in sizes if mode in options]
    choice = choose(config.objective, list(options.values()), ctx.settings.quantize.size_tie)
    metrics["reason"] = choice.reason
    if choice.option is None:
        return None, metrics
    best = next(r for r in timed if r.mode == choice.option.mode)
    assert best.best.path is not None
    metrics.update(best.summary())
    metrics.update(rows[best.mode])
    metrics.update(mode="auto", chosen=best.mode, objective=config.objective.value, reason=choice.reason)
    return best.best.path, metrics


def _time_candidates(
    model_path: Path,
    timed: list[SearchResult],
    rows: dict[str, dict[str, Any]],
    evaluator: Evaluator,
    config: AutoQuantizeConfig,
    ctx: PassContext,
    metrics: dict[str, Any],
) -> dict[str, Option]:
    """Time `timed` against the input in one interleaved measurement; their rows get the figures."""
    paths = [r.best.path for r in timed if r.best.path is not None]
    comparison = measure_candidates(model_path, paths, evaluator, config.objective, ctx.settings, ctx.check_canceled)
    base = comparison.models[0]
    metrics["input_latency_ms"] = base.median_ms
    metrics["latency_measurement"] = comparison.summary()
    options: dict[str, Option] = {}
    for result, stats, interval in zip(timed, comparison.models[1:], comparison.ratios, strict=True):
        rows[result.mode].update(latency_facts(base, stats, interval, ctx.settings))
        verdict = speed_verdict(interval, ctx.settings)
        options[result.mode] = Option(result.mode, rows[result.mode]["size_ratio"], interval, verdict)
    return options
