"""Per-group sparsities from measured output damage: prune less where the outputs suffer, more where they do not.

Uniform structured pruning removes the same fraction of every group, yet groups differ by orders of magnitude
in how much the model's outputs move when they lose channels (a recurrent layer's hidden units or a detector's
last stage against a wide early convolution). With calibration data, each prunable group is tried alone at a
few sparsities (its least important channels, in the same order the prune uses) and the damage is measured:
the relative squared error of the model's float outputs on a few calibration samples (`_damage`). Then each
group gets the level that keeps the summed damage lowest while the weights removed in all, counted exactly
over the sliced initializers, are at least what uniform pruning at the requested sparsity removes (a local
search from the uniform levels, `_choose`), so a prune at 0.3 is at least as small, with its cuts where they
hurt least.

A trial never rewrites the graph: removing a group's channels leaves its consumers reading nothing from them,
which is what zeroing the consumers' input weights for those channels does. The consumers' weights become
overridable graph inputs of one probe session, and each trial feeds zeroed copies (one session, no rebuild).
Groups this cannot try (attention-head tiles, consumer weights inside If/Loop/Scan bodies or also read
elsewhere, a group without consumer weights) keep the requested sparsity. The time budget
(`prune_allocation_seconds`) first buys every group one trial at the requested level, then the other levels
(extrapolated when time runs out); when it cannot buy every group its one trial, the prune stays uniform.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from pydantic import BaseModel, Field

from compression.datasets import Dataset
from compression.errors import JobInterrupted
from compression.graph_names import defined_names, iter_graphs, read_counts
from compression.metrics.inference import make_session
from compression.pruning.layout import Analysis, Group, Slot

Keep = Callable[[int, float], int]  # (group size, sparsity) -> channels kept


@dataclass(frozen=True)
class AllocationLimits:
    seconds: float  # the whole measurement, probe session included
    samples: int  # calibration samples each trial runs on
    max_group_sparsity: float  # no group loses more than this fraction


class GroupDamage(BaseModel):
    producers: list[str]
    channels: int
    sparsity: float  # the level chosen
    damage: dict[str, float] = Field(default_factory=dict)  # level -> relative squared output error (_damage)
    estimated: list[str] | None = None  # levels whose damage was extrapolated from the requested level's
    note: str | None = None  # why the group kept the requested sparsity


class AllocationReport(BaseModel):
    method: str  # "sensitivity" | "uniform"
    reason: str | None = None
    seconds: float = 0.0
    samples: int = 0
    groups_measured: int = 0
    groups_fixed: int = 0
    weights_removed_uniform: int = 0  # what uniform pruning at the requested sparsity removes
    weights_removed: int = 0  # what the chosen levels remove (both counted exactly over the sliced initializers)
    damage_uniform: float | None = None  # summed damage (_Trial.cost) of the uniform levels (measured groups)
    damage: float | None = None  # ... of the chosen levels
    groups: list[GroupDamage] = Field(default_factory=list)


@dataclass
class _Trial:
    group: Group
    levels: list[float]  # candidate sparsities, 0 first
    damage: list[float]  # measured at each level
    kept: list[int]  # channels kept at each level
    estimated: set[int] = field(default_factory=set)  # level indices extrapolated, not measured

    @property
    def cost(self) -> list[float]:
        """The damage the choice goes by: never lower at a deeper level than at a shallower one. A deeper level
        removes the shallower one's channels and more, so a lower reading there is the few samples' noise or
        an interaction of cuts, not a reason to remove more than was asked (lac read less damage at 0.6 than at
        0.3 in its largest group, and the prune removed 57% of the weights for a requested 0.3)."""
        return np.maximum.accumulate(np.asarray(self.damage, dtype=np.float64)).tolist()


class _WeightCount:
    """Weights the groups' cuts remove from the initializers they slice, counted exactly: an initializer two
    groups cut (a Conv's output and input channels) loses rows and columns, not their sum."""

    def __init__(self, groups: list[Group]) -> None:
        self.sites: dict[str, tuple[list[int], dict[int, set[tuple[int, int, int]]]]] = {}
        self.by_group: dict[int, set[str]] = {}
        for group in groups:
            for slot in group.slots:
                value = slot.node.inputs[slot.input_index]
                if value is None or value.const_value is None or not value.name:
                    continue
                dims = [int(d) for d in value.const_value.shape.numpy()]
                if slot.axis >= len(dims) or not dims[slot.axis]:
                    continue
                site = self.sites.setdefault(value.name, (dims, {}))
                site[1].setdefault(slot.axis, set()).add((group.id, slot.block, slot.offset))
                self.by_group.setdefault(group.id, set()).add(value.name)

    def _left(self, name: str, cut: dict[int, int]) -> float:
        dims, axes = self.sites[name]
        left = float(np.prod(dims))
        for axis, entries in axes.items():
            removed = sum(cut.get(group, 0) * block for group, block, _ in entries)
            left *= max(dims[axis] - removed, 0) / dims[axis]
        return left

    def removed(self, cut: dict[int, int]) -> int:
        """Weights removed in all when each group loses `cut[group id]` channels."""
        return round(sum(float(np.prod(dims)) - self._left(name, cut) for name, (dims, _) in self.sites.items()))

    def gain(self, cut: dict[int, int], group: int, channels: int) -> float:
        """More weights removed when `group` loses `channels` instead of `cut[group]`."""
        names = self.by_group.get(group, set())
        moved = {**cut, group: channels}
        return sum(self._left(name, cut) - self._left(name, moved) for name in names)


def _consumer_slots(group: Group, reads: Counter[str], defined: Counter[str]) -> list[Slot] | str:
    """The slots whose zeroing stands for removing the group's channels, or why the group cannot be tried.

    A consumer weight must be an initializer (of the main graph, or of an If/Loop/Scan body, which the probe
    moves to the main graph: the body then reads it from the outer scope) whose name is defined once in the model.
    """
    if group.tile_of is not None:
        return "attention-head tile: follows its head group"
    slots = [slot for slot in group.slots if slot.role == "weight_in"]
    if not slots:
        return "no consumer weights to zero"
    own: Counter[str] = Counter()
    for slot in slots:
        value = slot.node.inputs[slot.input_index]
        graph = value.graph if value is not None else None
        if value is None or graph is None or graph.initializers.get(value.name) is not value:
            return "a consumer's weight is not an initializer (computed in the graph)"
        if defined[value.name] != 1:
            return "a consumer's weight shares its name with another value of the model (in another body)"
        own[value.name] += 1
    if any(reads[name] > count for name, count in own.items()):  # a feed would change the other readers too
        return "a consumer's weight is also read elsewhere (another node or an If/Loop/Scan body)"
    return slots


def _definitions(graph: onnx.GraphProto) -> Counter[str]:
    """How many graphs define each name (inputs, initializers, node outputs), bodies included."""
    return Counter(name for scope in iter_graphs(graph) for name in defined_names(scope))


def _levels(sparsity: float, cap: float) -> list[float]:
    top = max(min(2.0 * sparsity, cap), sparsity)
    return sorted({0.0, round(sparsity / 2, 4), sparsity, round(top, 4)})


def _zeroed(group: Group, slots: list[Slot], removed: np.ndarray, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies of the consumers' weights with the removed channels' input positions zeroed."""
    out: dict[str, np.ndarray] = {}
    for slot in slots:
        name = slot.node.inputs[slot.input_index].name  # type: ignore[union-attr]
        array = out.get(name)
        if array is None:
            array = base[name].copy()
            out[name] = array
        moved = np.moveaxis(array, slot.axis, 0)  # a view: writes land in `array`
        for channel in removed:
            start = slot.offset + int(channel) * slot.block
            moved[start : start + slot.block] = 0
    return out


def _relative_errors(ref: np.ndarray, out: np.ndarray, batched: bool) -> list[float]:
    """||y - y0||^2 / ||y0||^2 per sample (per feed when the feed is one stacked entry), capped at 4."""
    if ref.shape != out.shape:
        return [1.0]
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    if batched and ref64.ndim >= 2:
        ref64, out64 = ref64.reshape(len(ref64), -1), out64.reshape(len(out64), -1)
    else:
        ref64, out64 = ref64.reshape(1, -1), out64.reshape(1, -1)
    energy = np.square(ref64).sum(axis=1)
    error = np.square(out64 - ref64).sum(axis=1)
    ratio = np.where(energy > 0, error / np.maximum(energy, 1e-30), np.where(error == 0, 0.0, 1.0))
    return [float(v) for v in np.minimum(ratio, 4.0)]


def _damage(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]], batched: bool) -> float:
    """The mean of the average and the worst per-sample relative squared error over the float outputs: the
    judge of a pruned model looks at its worst sample, and the average keeps the measure smooth."""
    values: list[float] = []
    for ref_feed, out_feed in zip(reference, outputs, strict=True):
        for ref, out in zip(ref_feed, out_feed, strict=True):
            values += _relative_errors(ref, out, batched)
    return 0.5 * (float(np.mean(values)) + float(np.max(values))) if values else 0.0


MOVES_PER_GROUP = 8  # the local search stops after this many moves per measured group (4 levels each)
MAX_OVERSHOOT = 0.25  # moves keep the weights removed within this share above uniform pruning's


def _cut(trials: list[_Trial], picks: list[int], uniform_cut: dict[int, int]) -> dict[int, int]:
    """Channels removed per group id: the trials' picked levels, uniform pruning's for the groups not tried."""
    return {**uniform_cut, **{t.group.id: t.group.size - t.kept[i] for t, i in zip(trials, picks, strict=True)}}


def _choose(trials: list[_Trial], start: list[int], counter: _WeightCount, uniform_cut: dict[int, int]) -> list[int]:
    """Level indices with the least summed damage (`_Trial.cost`) among those removing at least what `start` removes.

    Local search from `start` (the requested sparsity everywhere): each move changes one group's level, or two
    groups' levels together (one cut deeper, one spared), when that keeps enough weights removed (counted
    exactly), not more than MAX_OVERSHOOT above them (a prune asked for 0.3 stays about that size: lac's
    embedding at 0.6 for both GRUs spared removed 57% of its weights), and lowers the summed damage; the best
    move is taken until none helps. Damage curves are not convex (a group's loss can jump at its first cut and
    then flatten), so a Lagrangian sweep would skip the middle levels.
    """
    picks = list(start)
    costs = [t.cost for t in trials]
    target = counter.removed(_cut(trials, picks, uniform_cut))
    headroom = MAX_OVERSHOOT * target
    for _ in range(MOVES_PER_GROUP * len(trials)):  # bounded: every move is a full pass over the candidates
        cut = _cut(trials, picks, uniform_cut)
        slack = counter.removed(cut) - target
        room = headroom - slack  # more weights a move may remove
        moves = [
            (
                g,
                level,
                counter.gain(cut, t.group.id, t.group.size - t.kept[level]),
                costs[g][level] - costs[g][picks[g]],
            )
            for g, t in enumerate(trials)
            for level in range(len(t.levels))
            if level != picks[g]
        ]
        if not moves:
            break
        group = np.array([m[0] for m in moves])
        level = np.array([m[1] for m in moves])
        d_removed = np.array([m[2] for m in moves], dtype=np.float64)
        d_damage = np.array([m[3] for m in moves], dtype=np.float64)
        best_gain, best = -1e-12, None
        single = np.flatnonzero((d_removed >= -slack) & (d_removed <= room) & (d_damage < 0))
        if single.size:
            k = single[np.argmin(d_damage[single])]
            best_gain, best = d_damage[k], [k]
        pair_damage = d_damage[:, None] + d_damage[None, :]
        pair_removed = d_removed[:, None] + d_removed[None, :]
        feasible = (pair_removed >= -slack) & (pair_removed <= room) & (group[:, None] != group[None, :])
        pair_damage = np.where(feasible, pair_damage, np.inf)
        a, b = np.unravel_index(np.argmin(pair_damage), pair_damage.shape)
        if pair_damage[a, b] < best_gain:
            best = [a, b]
        if best is None:
            break
        for k in best:
            picks[int(group[k])] = int(level[k])
    return picks


def _meet_exact_target(
    trials: list[_Trial], picks: list[int], counter: _WeightCount, uniform_cut: dict[int, int]
) -> list[int]:
    """`picks` cut deeper where it costs the least damage per weight until they remove at least as many weights as
    uniform pruning (a pair move of `_choose` adds the two groups' gains, which overlapping cuts do not)."""
    picks = list(picks)
    costs = [t.cost for t in trials]
    target = counter.removed(uniform_cut)
    cut = _cut(trials, picks, uniform_cut)
    while counter.removed(cut) < target:
        best: tuple[float, int, int] | None = None
        for index, trial in enumerate(trials):
            for level in range(picks[index] + 1, len(trial.levels)):
                gain = counter.gain(cut, trial.group.id, trial.group.size - trial.kept[level])
                if gain <= 0:
                    continue
                cost = (costs[index][level] - costs[index][picks[index]]) / gain
                if best is None or cost < best[0]:
                    best = (cost, index, level)
        if best is None:
            break
        picks[best[1]] = best[2]
        cut = _cut(trials, picks, uniform_cut)
    return picks


class _Probe:
    """One session whose consumer weights are graph inputs, run on a few calibration feeds."""

    def __init__(
        self, proto: onnx.ModelProto, names: set[str], feeds: list[dict[str, np.ndarray]], folder: Path
    ) -> None:
        declared = {i.name for i in proto.graph.input}
        for body in list(iter_graphs(proto.graph))[1:]:  # body weights move out: the body reads the outer value
            for init in [init for init in body.initializer if init.name in names]:
                body.initializer.remove(init)
                proto.graph.initializer.append(init)
        for init in proto.graph.initializer:
            if init.name in names and init.name not in declared:
                proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
        path = folder / "allocation_probe.onnx"
        onnx.save(proto, str(path), save_as_external_data=proto.ByteSize() > 1_500_000_000)
        self.session = make_session(path)
        self.outputs = [
            o.name
            for o in self.session.get_outputs()
            if o.type in ("tensor(float)", "tensor(double)", "tensor(float16)")
        ]
        self.feeds = feeds

    def run(self, weights: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        return [self.session.run(self.outputs, {**feed, **weights}) for feed in self.feeds]

    def fit_samples(self, dataset: Dataset, samples: int, batch_size: int, groups: int, deadline: float) -> int:
        """Times the reference run and cuts the samples (to at least 1) so half the time left tries every group
        once; sets `reference` and `batched`. Returns the samples used."""
        self.batched = dataset.layout == "batched"
        timer = time.monotonic()
        self.reference = self.run({})
        per_sample = (time.monotonic() - timer) / max(samples, 1)
        affordable = int(0.5 * (deadline - time.monotonic()) / max(groups * per_sample, 1e-9))
        if affordable < samples:
            samples = max(affordable, 1)
            self.feeds = [feed for feed, _ in dataset.take(samples).batches(batch_size)]
            self.reference = self.run({})
        return samples

    def damage(self, weights: dict[str, np.ndarray]) -> float:
        return _damage(self.reference, self.run(weights), self.batched)


UNREACHED = (
    "no measured cut moved the outputs at all: the calibration data never reaches these channels (an If branch it "
    "does not take), so the group keeps the requested sparsity instead of losing the most"
)


def _unreached(trial: _Trial) -> bool:
    """Every measured level that removes channels left the outputs exactly as they were."""
    measured = [d for i, (d, k) in enumerate(zip(trial.damage, trial.kept, strict=True))
                if k < trial.group.size and i not in trial.estimated]  # fmt: skip
    return bool(measured) and all(d == 0.0 for d in measured)


EXPONENT = 1.5  # damage ~ level ** EXPONENT: the extrapolation of levels there was no time to measure
UNKNOWN = 1e9  # the damage of a level neither measured nor extrapolated


def _measure(
    probe: _Probe,
    tryable: list[tuple[Group, list[Slot]]],
    scores: dict[int, np.ndarray],
    sparsity: float,
    keep: Keep,
    base: dict[str, np.ndarray],
    limits: AllocationLimits,
    deadline: float,
    check_canceled: Callable[[], None],
) -> list[_Trial]:
    """Every group's damage at the requested level first (in `tryable`'s order, until the deadline), then at
    the other levels while time remains; a level not reached is extrapolated from the requested one."""
    levels = _levels(sparsity, limits.max_group_sparsity)
    target = levels.index(sparsity)
    trials: list[_Trial] = []

    def trial_damage(group: Group, slots: list[Slot], kept: int) -> float:
        order = np.argsort(scores[group.id], kind="stable")
        return probe.damage(_zeroed(group, slots, order[: group.size - kept], base))

    for group, slots in tryable:
        check_canceled()
        if time.monotonic() > deadline:
            break
        kept = [keep(group.size, level) for level in levels]
        damage = [0.0 if k == group.size else math.nan for k in kept]
        if kept[target] < group.size:
            damage[target] = trial_damage(group, slots, kept[target])
        trials.append(_Trial(group, levels, damage, kept))
    for trial, (_, slots) in zip(trials, tryable, strict=False):
        for index, value in enumerate(trial.damage):
            if not math.isnan(value):
                continue
            if time.monotonic() <= deadline:
                check_canceled()
                trial.damage[index] = trial_damage(trial.group, slots, trial.kept[index])
            elif trial.kept[target] < trial.group.size:
                trial.damage[index] = trial.damage[target] * (levels[index] / sparsity) ** EXPONENT
                trial.estimated.add(index)
            else:  # nothing measured to extrapolate from: never chosen
                trial.damage[index] = UNKNOWN
                trial.estimated.add(index)
    return trials


def allocate(
    model: ir.Model,
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    sparsity: float,
    keep: Keep,
    dataset: Dataset | None,
    batch_size: int,
    limits: AllocationLimits,
    check_canceled: Callable[[], None],
) -> tuple[dict[int, float], AllocationReport]:
    """A sparsity per prunable root group (the requested one where nothing was measured), and the report."""
    prunable = [g for g in analysis.roots() if g.prunable and g.tile_of is None and g.id in scores]
    uniform = {g.id: sparsity for g in prunable}
    if dataset is None:
        return uniform, AllocationReport(method="uniform", reason="needs a calibration or train dataset")
    if sparsity <= 0 or not prunable:
        return uniform, AllocationReport(method="uniform", reason="nothing to allocate")
    started = time.monotonic()
    report = AllocationReport(method="sensitivity")
    tryable: list[tuple[Group, list[Slot]]] = []
    proto = ir.to_proto(model)
    reads, defined = read_counts(proto.graph), _definitions(proto.graph)
    for group in prunable:
        slots = _consumer_slots(group, reads, defined)
        if isinstance(slots, str):
            report.groups.append(GroupDamage(producers=group.producers, channels=group.size, sparsity=sparsity,
                                             note=slots))  # fmt: skip
        else:
            tryable.append((group, slots))
    if not tryable:
        report.method, report.reason = "uniform", "no group can be tried"
        return uniform, report
    # largest groups first (the weights they span): when the budget runs out, those that decide the size were measured
    counter = _WeightCount(prunable)
    tryable.sort(key=lambda item: -counter.gain({}, item[0].id, item[0].size))
    feeds = [feed for feed, _ in dataset.take(limits.samples).batches(batch_size)]
    base = {  # the consumer weights the trials feed zeroed copies of, by name
        slot.node.inputs[slot.input_index].name: slot.node.inputs[slot.input_index].const_value.numpy()  # type: ignore[union-attr]
        for _, slots in tryable
        for slot in slots
    }
    with tempfile.TemporaryDirectory() as tmp:
        try:
            probe = _Probe(proto, set(base), feeds, Path(tmp))
        except Exception as exc:  # an exotic graph onnxruntime will not load with overridable weights
            report.method, report.reason = "uniform", f"probe session failed: {str(exc).splitlines()[0][:200]}"
            return uniform, report
        if not probe.outputs:
            report.method, report.reason = "uniform", "the model has no float outputs to measure damage on"
            return uniform, report
        deadline = started + limits.seconds
        try:
            report.samples = probe.fit_samples(dataset, min(limits.samples, dataset.n_samples), batch_size,
                                               len(tryable), deadline)  # fmt: skip
            trials = _measure(probe, tryable, scores, sparsity, keep, base, limits, deadline, check_canceled)
        except JobInterrupted:
            raise
        except Exception as exc:  # a trial onnxruntime cannot run (or the run limit): the prune goes on uniform
            report.method, report.reason = "uniform", f"a trial run failed: {str(exc).splitlines()[0][:200]}"
            report.groups = []
            return uniform, report
    if len(trials) < len(tryable):  # a partial picture misleads: measured cuts moved around unmeasured ones
        report.method = "uniform"
        report.reason = (
            f"prune_allocation_seconds ({limits.seconds:g} s) allowed one trial for {len(trials)} of {len(tryable)} "
            "groups; every group keeps the requested sparsity"
        )
        report.groups_measured, report.groups_fixed, report.groups = len(trials), len(tryable) - len(trials), []
        report.seconds = round(time.monotonic() - started, 3)
        return uniform, report
    for trial in [t for t in trials if _unreached(t)]:
        trials.remove(trial)
        report.groups.append(GroupDamage(producers=trial.group.producers, channels=trial.group.size,
                                         sparsity=sparsity, note=UNREACHED))  # fmt: skip
    report.groups_measured = len(trials)
    report.groups_fixed = len(report.groups)
    chosen = dict(uniform)
    if trials:
        target_level = [t.levels.index(sparsity) for t in trials]
        uniform_cut = {g.id: g.size - keep(g.size, sparsity) for g in prunable}
        picks = _choose(trials, target_level, counter, uniform_cut)
        picks = _meet_exact_target(trials, picks, counter, uniform_cut)
        cut = _cut(trials, picks, uniform_cut)
        report.weights_removed_uniform = counter.removed(uniform_cut)
        report.weights_removed = counter.removed(cut)
        report.damage_uniform = float(sum(t.cost[i] for t, i in zip(trials, target_level, strict=True)))
        report.damage = float(sum(t.cost[i] for t, i in zip(trials, picks, strict=True)))
        for trial, index in zip(trials, picks, strict=True):
            chosen[trial.group.id] = trial.levels[index]
            report.groups.append(GroupDamage(
                producers=trial.group.producers, channels=trial.group.size, sparsity=trial.levels[index],
                damage={f"{lvl:g}": round(d, 6) for lvl, d in zip(trial.levels, trial.damage, strict=True)},
                estimated=[f"{trial.levels[i]:g}" for i in sorted(trial.estimated)] or None,
            ))  # fmt: skip
    report.seconds = round(time.monotonic() - started, 3)
    return chosen, report


def allocation_limits(settings: Any) -> AllocationLimits:
    """The limits from the engine settings (`EngineSettings`)."""
    prune = settings.prune
    return AllocationLimits(
        seconds=prune.allocation_seconds,
        samples=prune.allocation_samples,
        max_group_sparsity=prune.allocation_max_group_sparsity,
    )


def report_dict(report: AllocationReport) -> dict[str, Any]:
    return report.model_dump(exclude_none=True)
