"""Quantize, check the budget, and keep nodes in float until it is met (collapsed outputs first).

Each phase is timed into the result's `timings` (compression/quantization/timing.py) and each attempt's
quantize and evaluate seconds go into its history entry. With a `SearchClock` (auto), no attempt starts once
the clock has expired (the first attempt always runs): the search returns its best within-budget attempt so
far (or none), and the clock records what it would have tried next.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from compression.contract import PassContext
from compression.errors import CompressionError, InvalidModelError, JobCanceledError
from compression.metrics.evaluation import Evaluator
from compression.metrics.fidelity import Fidelity
from compression.model_info import iter_nodes
from compression.quantization.budget import Budget, Verdict, judge
from compression.quantization.modes import ModeQuantizer
from compression.quantization.prepare import Prepared
from compression.quantization.sensitivity import NodeSensitivity, RankingStopped, rank_nodes
from compression.quantization.timing import PhaseTimes, SearchClock, collecting, phase


@dataclass
class Attempt:
    path: Path | None
    fidelity: Fidelity | None
    verdict: Verdict
    excluded: list[str]
    quantize_s: float = 0.0
    evaluate_s: float = 0.0


@dataclass
class SearchResult:
    mode: str
    best: Attempt
    attempts: int
    sensitivity: list[NodeSensitivity] = field(default_factory=list)
    output_guard: list[str] = field(default_factory=list)
    given_back: list[str] = field(default_factory=list)  # nodes the give-back pass quantized again
    history: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.best.path is not None and self.best.verdict.ok

    def summary(self) -> dict[str, Any]:
        verdict = self.best.verdict
        return {
            "mode": self.mode,
            "within_budget": self.ok,
            "reasons": verdict.reasons,
            "budget_metric": verdict.metric,
            "drop": verdict.drop,
            "budget_metrics": {name: judged.model_dump() for name, judged in verdict.outputs.items()},
            "nodes_kept_float": self.best.excluded,
            "kept_float_for_collapsed_outputs": self.output_guard,
            "given_back": self.given_back,
            "quantization_attempts": self.attempts,
            "attempt_history": self.history,
            "sensitivity": [s.model_dump() for s in self.sensitivity],
            **self.details,
        }


class BudgetSearch:
    """Runs one mode's quantizer with a growing float-exclusion list until the budget verdict passes."""

    def __init__(
        self,
        quantizer: ModeQuantizer,
        ctx: PassContext,
        evaluator: Evaluator,
        budget: Budget,
        stem: str,
        progress: tuple[float, float] = (0.05, 0.85),
        clock: SearchClock | None = None,
    ) -> None:
        self.quantizer, self.ctx, self.evaluator, self.budget, self.stem = quantizer, ctx, evaluator, budget, stem
        self.progress = progress
        self.attempts = 0
        self.clock = clock
        self.times = PhaseTimes()
        self.first_attempt_s = 0.0
        self._state: tuple[SearchResult, Prepared, list[str], list[str]] | None = None

    def _out_of_time(self, next_step: str) -> bool:
        """The clock expired: record `next_step` as what the search would have tried, and say so."""
        if self.clock is None or not self.clock.expired():
            return False
        mode = self.quantizer.config.mode
        self.clock.stop(mode, next_step)
        self.ctx.event(f"{mode}: search time bound reached; not trying: {next_step}", **self.clock.summary())
        return True

    def _attempt(self, prepared: Prepared, exclude: list[str]) -> Attempt:
        self.ctx.check_canceled()
        self.attempts += 1
        low, high = self.progress
        done = 1.0 - 0.5**self.attempts  # the number of attempts is not known up front
        mode = self.quantizer.config.mode
        self.ctx.progress(low + (high - low) * done, f"{mode}: attempt {self.attempts} ({len(exclude)} node(s) float)")
        dst = self.ctx.new_model_path(self.stem)
        started = time.perf_counter()
        try:
            with phase("attempt_quantize"):
                self.quantizer.quantize(prepared, dst, exclude)
        except (CompressionError, JobCanceledError):
            raise
        except Exception as exc:  # onnxruntime's quantizers raise bare exceptions on graphs they cannot handle
            reason = f"onnxruntime's quantizer failed: {type(exc).__name__}: {str(exc)[:300]}"
            self.ctx.event(reason)
            return Attempt(None, None, Verdict(ok=False, reasons=[reason]), exclude, time.perf_counter() - started)
        quantized = time.perf_counter()
        try:
            with phase("attempt_evaluate"):
                fidelity = self.evaluator.fidelity(dst)
        except InvalidModelError as exc:  # every returned model must load and run
            failed = Verdict(ok=False, reasons=[exc.message])
            return Attempt(None, None, failed, exclude, quantized - started, time.perf_counter() - quantized)
        verdict = judge(fidelity, self.budget)
        return Attempt(dst, fidelity, verdict, exclude, quantized - started, time.perf_counter() - quantized)

    def _record(self, result: SearchResult, attempt: Attempt) -> Attempt:
        """Keep why each attempt was rejected, so the metrics say why nodes ended up float."""
        verdict = attempt.verdict
        result.history.append(
            {
                "kept_float": list(attempt.excluded),
                "ok": verdict.ok,
                "drop": verdict.drop,
                "reasons": verdict.reasons,
                "quantize_s": round(attempt.quantize_s, 3),
                "evaluate_s": round(attempt.evaluate_s, 3),
            }
        )
        return attempt

    def run(self, src: Path) -> SearchResult:
        self.start(src)
        return self.finish()

    @property
    def first_ok(self) -> bool:
        """The first attempt (after `start`) met the budget: `finish` has only optional work left."""
        return self._state is not None and self._state[0].best.verdict.ok

    @property
    def first_miss(self) -> float:
        """How far the first attempt missed the budget (`Verdict.miss`); infinite before `start` or without one."""
        return self._state[0].best.verdict.miss() if self._state is not None else float("inf")

    @property
    def first_bytes(self) -> int | None:
        """The size of the first attempt's model (after `start`); None when it produced none."""
        path = self._state[0].best.path if self._state is not None else None
        return path.stat().st_size if path is not None and path.is_file() else None

    def skip(self) -> SearchResult:
        """End after `start` with no further attempt (auto: a candidate that cannot be chosen whatever it finds)."""
        assert self._state is not None, "start() first"
        result, prepared, _, _ = self._state
        return self._done(result, prepared)

    def start(self, src: Path) -> SearchResult:
        """Prepare, tune and judge the first attempt (the user's exclusions only); `finish` goes on from there.

        Its cost (`first_attempt_s`) is the unit of the clock's bound; `auto` starts every candidate before it
        finishes any, so the cheap ones' searches can run first.
        """
        started = time.perf_counter()
        with collecting(self.times):
            result, prepared, user, candidates = self._first(src)
        self.first_attempt_s = time.perf_counter() - started
        if self.clock is not None:
            self.clock.first_attempt(self.first_attempt_s)
        self._state = (result, prepared, user, candidates)
        return result

    def finish(self) -> SearchResult:
        """The rest of the search after `start`: keep nodes float until the budget holds (or time is up)."""
        assert self._state is not None, "start() first"
        result, prepared, user, candidates = self._state
        if self.clock is not None:
            self.clock.order.append(self.quantizer.config.mode)
        with collecting(self.times):
            self._refine(result, prepared, user, candidates)
            self._tune_returned(result, prepared)
        return self._done(result, prepared)

    def _tune_returned(self, result: SearchResult, prepared: Prepared) -> None:
        """Mode choices timed once, on the within-budget attempt to be returned (static: its Conv layout).

        Not under the clock: it decides the speed of the model returned, and costs at most the timing-only
        quantizations of the other choices, one timing and one attempt.
        """
        best = result.best
        if not best.verdict.ok or best.path is None:
            return
        with phase("tune_returned"):
            changed = self.quantizer.tune_returned(prepared, self.evaluator, best.path, list(best.excluded))
        if not changed:
            return
        attempt = self._record(result, self._attempt(prepared, list(best.excluded)))
        if attempt.verdict.ok and attempt.path is not None:
            result.best = attempt
            self.quantizer.returned_kept(prepared)
        else:
            self.quantizer.returned_rejected(prepared, attempt.verdict.reasons)

    def _first(self, src: Path) -> tuple[SearchResult, Prepared, list[str], list[str]]:
        mode = self.quantizer.config.mode
        with phase("prepare"):
            prepared = self.quantizer.prepare(src)
        with phase("tune"):
            self.quantizer.tune(prepared, self.evaluator)
        user = list(self.quantizer.config.nodes_to_exclude)
        unknown = sorted(set(user) - node_names(prepared.path) - node_names(src))
        if unknown:
            self.ctx.event("nodes_to_exclude names no node of the model; check the spelling", nodes=unknown)
            self.quantizer.details["unknown_nodes_to_exclude"] = unknown
        attempt = self._attempt(prepared, user)
        result = SearchResult(mode=mode, best=attempt, attempts=0, details=self.quantizer.details)
        self._record(result, attempt)
        return result, prepared, user, self.quantizer.candidate_nodes(prepared)

    def _refine(self, result: SearchResult, prepared: Prepared, user: list[str], candidates: list[str]) -> None:
        attempt = result.best
        if attempt.verdict.ok:
            if self.budget.max_accuracy_drop is not None and attempt.path is not None and self._rank_when_met():
                # met at once: the table still tells the user where the error would come from
                result.sensitivity = self._rank(prepared, attempt.path, [c for c in candidates if c not in user])
            return
        excluded = list(user)
        if attempt.verdict.collapsed_outputs:
            guard = producers(prepared.path, attempt.verdict.collapsed_outputs, set(candidates))
            guard = [name for name in guard if name not in excluded]
            if guard and self._out_of_time(f"keep {len(guard)} producer(s) of collapsed outputs float"):
                return
            if guard:
                self.ctx.event(
                    "keeping the producers of collapsed outputs in float",
                    outputs=attempt.verdict.collapsed_outputs,
                    nodes=guard,
                    reasons=attempt.verdict.reasons,
                )
                result.output_guard = guard
                excluded += guard
                attempt = self._record(result, self._attempt(prepared, excluded))
                result.best = attempt
                if attempt.verdict.ok:
                    return
        if attempt.path is None:
            return
        if self._out_of_time("rank node sensitivity, then keep the most sensitive nodes float"):
            return
        ranked = self._rank(prepared, attempt.path, [c for c in candidates if c not in excluded])
        result.sensitivity = ranked
        order = [s.node for s in ranked]
        rounds = self.ctx.settings.quantize.exclusion_rounds
        group = max(1, math.ceil(len(order) / rounds))
        for start in range(0, len(order), group):
            before = list(excluded)
            chunk = order[start : start + group]
            if self._out_of_time(f"keep {len(before) + len(chunk)} node(s) float (next: {', '.join(chunk[:3])} ...)"):
                break
            excluded += chunk
            self.ctx.event(
                "keeping the most sensitive nodes in float", nodes=chunk, reasons=result.best.verdict.reasons
            )
            attempt = self._record(result, self._attempt(prepared, excluded))
            result.best = attempt
            if attempt.verdict.ok:
                excluded = self._shrink(result, prepared, before, chunk)
                break
        if (
            result.best.verdict.ok
            and result.output_guard
            and not self._out_of_time("re-quantize the producers of collapsed outputs")
        ):
            # the ranked exclusions may have fixed the collapse at its source: try re-quantizing the guard
            retry = self._attempt(prepared, [name for name in excluded if name not in set(result.output_guard)])
            self._record(result, retry)
            if retry.verdict.ok:
                result.best, result.output_guard = retry, []
        if result.best.verdict.ok and result.sensitivity:
            self._give_back(result, prepared, [s.node for s in result.sensitivity])
        if result.best.verdict.ok and candidates and set(candidates) <= set(result.best.excluded):
            # every quantizable node float: that is the input model with extra steps, not a success
            result.best.verdict = Verdict(ok=False, reasons=["the budget is met only with every node kept in float"])

    def _give_back(self, result: SearchResult, prepared: Prepared, ranked: list[str]) -> None:
        """Spend what the budget has left: quantize the ranked nodes kept float again, least sensitive first.

        The exclusion groups and the prefix bisection follow the ranking, which is a rough guess, so the passing
        float list is often longer than needed. Batches start at half of the nodes still to try; a batch that
        breaks the budget is halved, and a single node that breaks it stays float. At most
        `quant_give_back_attempts` attempts, under the time bound. The user's and the output guard's nodes stay.
        """
        cap = self.ctx.settings.quantize.give_back_attempts
        kept = set(result.best.excluded)
        pending = [node for node in reversed(ranked) if node in kept]
        batch = max(1, len(pending) // 2)
        tries = 0
        while pending and tries < cap:
            trial = pending[:batch]
            if self._out_of_time(f"give back {len(trial)} of {len(pending)} node(s) kept float"):
                break
            tries += 1
            back = set(trial)
            attempt = self._record(
                result, self._attempt(prepared, [name for name in result.best.excluded if name not in back])
            )
            if attempt.verdict.ok:
                result.best = attempt
                pending = pending[len(trial) :]
                batch = max(1, len(pending) // 2)
            elif batch == 1:
                pending = pending[1:]  # this node needs float
                batch = max(1, len(pending) // 2)
            else:
                batch = max(1, batch // 2)
        result.given_back = sorted(kept - set(result.best.excluded))

    def _rank_when_met(self) -> bool:
        """Rank the nodes of a first attempt that met the budget (information only) when the setting and time allow."""
        if not self.ctx.settings.quantize.sensitivity_when_met:
            return False
        return not self._out_of_time("rank node sensitivity (information only: the budget was met)")

    def _sensitivity_samples(self) -> int:
        """`quant_sensitivity_samples`, fewer when they would pass `quant_sensitivity_activation_mb` of activations."""
        knobs = self.ctx.settings.quantize
        size = self.evaluator.size
        if size is None or not size.measured or size.activations <= 0:
            return knobs.sensitivity_samples
        return min(knobs.sensitivity_samples, max(2, knobs.sensitivity_activation_mb * 2**20 // size.activations))

    def _rank(self, prepared: Prepared, quantized: Path, candidates: list[str]) -> list[NodeSensitivity]:
        samples = self._sensitivity_samples()
        self.quantizer.details["sensitivity_samples"] = min(samples, self.evaluator.dataset.n_samples)
        # past the bound no attempt can follow the ranking (every later step checks the clock): one that runs
        # into it is abandoned, which changes only the information table (deepcut: 3 s of a ranking no
        # attempt used)
        stop = self.clock.expired if self.clock is not None else None
        try:
            with phase("sensitivity"):
                return rank_nodes(
                    prepared.path,
                    quantized,
                    candidates,
                    self.evaluator.dataset.take(samples),
                    self.quantizer.work / "sensitivity",
                    self.ctx.settings.latency.threads,
                    memory_bytes=self.ctx.settings.quantize.activation_memory_mb * 2**20,
                    stop=stop,
                )
        except RankingStopped:
            self._out_of_time("finish the node sensitivity ranking (abandoned when the bound was reached)")
            self.quantizer.details["sensitivity_abandoned"] = True
            return []

    def _shrink(self, result: SearchResult, prepared: Prepared, before: list[str], chunk: list[str]) -> list[str]:
        """Bisect the group that met the budget for its shortest passing prefix (most sensitive first)."""
        low, high = 0, len(chunk)  # before + chunk[:low] fails, before + chunk[:high] passes
        while high - low > 1:
            middle = (low + high) // 2
            if self._out_of_time(f"bisect: keep {len(before) + middle} node(s) float instead of {len(before) + high}"):
                break
            attempt = self._record(result, self._attempt(prepared, [*before, *chunk[:middle]]))
            if attempt.verdict.ok:
                high, result.best = middle, attempt
            else:
                low = middle
        return [*before, *chunk[:high]]

    def _done(self, result: SearchResult, prepared: Prepared) -> SearchResult:
        result.attempts = self.attempts
        result.details = {**prepared.details, **self.quantizer.details, "timings": self.times.as_dict()}
        for internal in ("always_exclude", "small_conv_candidates"):
            result.details.pop(internal, None)
        return result


def node_names(path: Path) -> set[str]:
    return {node.name for node in iter_nodes(onnx.load(str(path), load_external_data=False).graph)}


WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN", "Attention", "Gather"})


def producers(path: Path, outputs: list[str], candidates: set[str]) -> list[str]:
    """Candidate nodes between each output and the nearest weighted op upstream (that op included).

    A Concat that joins boxes and scores shares one quantization scale, so the walk goes on through
    activation ops (Concat, Sigmoid, Reshape) up to the Conv/MatMul that computes the values.
    """
    model = onnx.load(str(path), load_external_data=False)
    by_output = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        node = by_output.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name in candidates:
            found.append(node.name)
        if node.op_type in WEIGHTED_OPS:
            continue
        stack.extend(i for i in node.input if i)
    return found
