"""Structured pruning: pick the least important channels of each prunable group and remove them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnx_ir.passes import common
from pydantic import BaseModel

from compression.datasets import Dataset
from compression.pruning.allocation import AllocationLimits, allocate, report_dict
from compression.pruning.compensation import compensate_biases
from compression.pruning.dependency import analyze
from compression.pruning.importance import (
    Importance,
    PositionStats,
    activation_scores,
    magnitude_scores,
    probe_statistics,
    probe_targets,
)
from compression.pruning.layout import Analysis, Group
from compression.pruning.model_io import SHAPE_REPORT, load_for_pruning, restore_declared_shapes, save_model
from compression.pruning.reconstruction import ReconstructionLimits, consumer_sites, reconstruct
from compression.pruning.rewrite import apply_removal


class GroupReport(BaseModel):
    """One dependency group: the layers producing it, its channels before/after, or why it was kept."""

    producers: list[str]
    channels: int
    kept: int
    status: str  # "pruned" | "kept" (fraction rounds to nothing) | "skipped" (unprunable)
    reason: str | None = None


def channels_to_keep(size: int, sparsity: float, round_to: int, min_channels: int) -> int:
    """Channels left after removing `sparsity` of `size`, rounded to a multiple of `round_to` (never above size)."""
    keep = size - int(math.floor(size * sparsity + 0.5))
    if round_to > 1 and size >= round_to:
        keep = max(round_to, int(math.floor(keep / round_to + 0.5)) * round_to)
    return min(size, max(keep, min(min_channels, size)))


def plan_removal(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    sparsity: float,
    round_to: int,
    min_channels: int,
    sparsities: dict[int, float] | None = None,
) -> tuple[dict[int, np.ndarray], list[GroupReport]]:
    """Least important channels of each prunable group (`sparsities[group id]`, else `sparsity`); groups tiled
    from a head-dim group follow it."""
    removal: dict[int, np.ndarray] = {}
    reports: list[GroupReport] = []
    tiled = [g for g in analysis.roots() if g.tile_of is not None]
    for group in analysis.roots():
        if group.tile_of is not None:
            continue
        if not group.prunable:
            reasons = "; ".join(group.reasons)
            reports.append(GroupReport(producers=group.producers, channels=group.size, kept=group.size,
                                       status="skipped", reason=reasons))  # fmt: skip
            continue
        level = sparsity if sparsities is None else sparsities.get(group.id, sparsity)
        keep = channels_to_keep(group.size, level, round_to, min_channels)
        # Stable sort: ties (e.g. identical norms) drop the later channel, so results are reproducible.
        order = np.argsort(scores[group.id], kind="stable")
        removed = np.sort(order[: group.size - keep])
        removal[group.id] = removed
        status = "pruned" if len(removed) else "kept"
        reports.append(GroupReport(producers=group.producers, channels=group.size, kept=keep, status=status))
    for group in tiled:
        tile_id, repeats = analysis.find(group.tile_of[0]), group.tile_of[1]  # type: ignore[index]
        tile_size = analysis.groups[tile_id].size
        removed_tile = removal.get(tile_id)
        if removed_tile is None or not group.prunable:
            reports.append(GroupReport(producers=group.producers, channels=group.size, kept=group.size,
                                       status="skipped", reason="; ".join(group.reasons) or None))  # fmt: skip
            continue
        removal[group.id] = np.concatenate([k * tile_size + removed_tile for k in range(repeats)])
        kept = group.size - len(removal[group.id])
        status = "pruned" if len(removed_tile) else "kept"
        reports.append(GroupReport(producers=group.producers, channels=group.size, kept=kept, status=status,
                                   reason=f"follows its {repeats} attention heads"))  # fmt: skip
    return removal, reports


def group_scores(analysis: Analysis, importance: Importance, stats: dict[str, PositionStats]) -> dict[int, np.ndarray]:
    """Importance of every prunable group; a head-dim group adds the per-head sums of its tiled groups."""
    scores: dict[int, np.ndarray] = {}
    for group in analysis.roots():
        if not group.prunable:
            continue
        score = activation_scores(group, stats) if importance == "activation" else None
        if score is None or not score.any():
            score = magnitude_scores(group, "l1" if importance == "l1" else "l2")
        scores[group.id] = score
    for tile_id, members in analysis.tiles().items():
        if tile_id not in scores:
            continue
        total = _normalized(scores[tile_id])
        for group, repeats in members:
            if group.id in scores:
                total = total + _normalized(scores[group.id].reshape(repeats, -1).sum(axis=0))
        scores[tile_id] = total
    return scores


def _normalized(values: np.ndarray) -> np.ndarray:
    mean = values.mean() if values.size else 0.0
    return values / mean if mean > 0 else values


def structured_prune(
    model_path: Path,
    out_path: Path,
    *,
    sparsity: float,
    importance: Importance,
    round_to: int,
    min_channels: int,
    exclude: list[str],
    dataset: Dataset | None,
    batch_size: int,
    max_samples: int,
    check_canceled: Callable[[], None],
    bias_compensation: bool = False,
    reconstruction: ReconstructionLimits | None = None,
    allocation: AllocationLimits | None = None,
) -> dict[str, Any]:
    """Remove `sparsity` of the channels of every prunable group; returns the per-group report and totals.

    With a dataset, activation statistics of the unpruned model drive `activation` importance and bias
    compensation (the mean of each removed channel folded into the next layer's bias), and with
    `reconstruction` the layers reading removed channels are refitted to the original's outputs by least
    squares (`reconstruction.py`). With `allocation`, each group's sparsity comes from its measured output damage
    at the same total of weights removed (`allocation.py`); without it every group loses `sparsity`.
    """
    model = load_for_pruning(model_path, dataset.first_feed(1) if dataset is not None else None)
    analysis = analyze(model, set(exclude))
    prunable = [g for g in analysis.roots() if g.prunable]
    if importance == "activation" and dataset is None:
        raise ValueError("activation importance needs a dataset")
    stats: dict[str, PositionStats] = {}
    if dataset is not None and (importance == "activation" or (bias_compensation and sparsity > 0)):
        stats = probe_statistics(model, probe_targets(prunable), dataset, batch_size, max_samples, check_canceled)
    scores = group_scores(analysis, importance, stats)
    check_canceled()
    sparsities: dict[int, float] | None = None
    allocated: dict[str, Any] = {"method": "uniform"}
    if allocation is not None:

        def keep(size: int, level: float) -> int:
            return channels_to_keep(size, level, round_to, min_channels)

        sparsities, report = allocate(
            model, analysis, scores, sparsity, keep, dataset, batch_size, allocation, check_canceled
        )
        allocated = report_dict(report)
    removal, reports = plan_removal(analysis, scores, sparsity, round_to, min_channels, sparsities)
    compensated: list[str] = []
    if bias_compensation and stats:
        compensated = compensate_biases(model, analysis, removal, stats)
        if compensated:  # new bias inputs must be sliced too: analyse again (the walk is deterministic)
            before = [(g.id, g.size) for g in analysis.roots()]
            analysis = analyze(model, set(exclude))
            if [(g.id, g.size) for g in analysis.roots()] != before:
                raise RuntimeError("channel groups changed after bias compensation")
    restore_declared_shapes(model)
    refit: dict[str, Any] | str = "off"
    if any(len(removed) for removed in removal.values()):  # nothing removed: the graph stays as it was
        sites = consumer_sites(analysis, removal)
        apply_removal(model, analysis, removal)
        if reconstruction is not None and dataset is not None and sites:
            common.TopologicalSortPass()(model)
            refit = reconstruct(model, model_path, sites, dataset, reconstruction, check_canceled).model_dump()
    if reconstruction is not None and dataset is None:
        refit = "off (needs a calibration or train dataset)"
    elif reconstruction is not None and isinstance(refit, str):
        refit = "nothing to reconstruct"
    save_model(model, out_path)
    summary = summarize(reports, sparsity)
    summary["shape_inference"] = model.meta[SHAPE_REPORT].as_metrics()
    if not bias_compensation:
        summary["bias_compensation"] = "off"
    elif not stats:
        summary["bias_compensation"] = "off (needs a calibration or train dataset)"
    else:
        summary["bias_compensation"] = compensated
    summary["reconstruction"] = refit
    summary["allocation"] = allocated
    return summary


def summarize(reports: list[GroupReport], sparsity: float) -> dict[str, Any]:
    prunable = [r for r in reports if r.status != "skipped"]
    channels = sum(r.channels for r in prunable)
    removed = sum(r.channels - r.kept for r in prunable)
    return {
        "requested_sparsity": sparsity,
        "achieved_channel_sparsity": removed / channels if channels else 0.0,
        "groups_total": len(reports),
        "groups_pruned": sum(r.status == "pruned" for r in reports),
        "groups_skipped": sum(r.status == "skipped" for r in reports),
        "channels_removed": removed,
        "channels_prunable": channels,
        "groups": [r.model_dump() for r in reports],
        "skipped": [{"producers": r.producers, "reason": r.reason} for r in reports if r.status == "skipped"],
    }


def groups_of(model_path: Path, exclude: list[str] | None = None) -> list[Group]:
    """The dependency groups of a model, for inspection and tests."""
    analysis = analyze(load_for_pruning(model_path), set(exclude or []))
    return analysis.roots()
