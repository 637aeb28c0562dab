"""Structured pruning: pick the least important channels of each prunable group and remove them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from compression.datasets import Dataset
from compression.pruning.dependency import Analysis, Group, analyze
from compression.pruning.importance import Importance, activation_scores, magnitude_scores
from compression.pruning.model_io import load_for_pruning, save_model
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
    analysis: Analysis, scores: dict[int, np.ndarray], sparsity: float, round_to: int, min_channels: int
) -> tuple[dict[int, np.ndarray], list[GroupReport]]:
    removal: dict[int, np.ndarray] = {}
    reports: list[GroupReport] = []
    for group in analysis.roots():
        if not group.prunable:
            reasons = "; ".join(group.reasons)
            reports.append(GroupReport(producers=group.producers, channels=group.size, kept=group.size,
                                       status="skipped", reason=reasons))  # fmt: skip
            continue
        keep = channels_to_keep(group.size, sparsity, round_to, min_channels)
        # Stable sort: ties (e.g. identical norms) drop the later channel, so results are reproducible.
        order = np.argsort(scores[group.id], kind="stable")
        removed = np.sort(order[: group.size - keep])
        removal[group.id] = removed
        status = "pruned" if len(removed) else "kept"
        reports.append(GroupReport(producers=group.producers, channels=group.size, kept=keep, status=status))
    return removal, reports


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
    check_cancelled: Callable[[], None],
) -> dict[str, Any]:
    """Remove `sparsity` of the channels of every prunable group; returns the per-group report and totals."""
    model = load_for_pruning(model_path)
    analysis = analyze(model, set(exclude))
    prunable = [g for g in analysis.roots() if g.prunable]
    if importance == "activation":
        if dataset is None:
            raise ValueError("activation importance needs a dataset")
        scores = activation_scores(model, prunable, dataset, batch_size, max_samples, check_cancelled)
    else:
        scores = {g.id: magnitude_scores(g, importance) for g in prunable}
    check_cancelled()
    removal, reports = plan_removal(analysis, scores, sparsity, round_to, min_channels)
    apply_removal(model, analysis, removal)
    save_model(model, out_path)
    return summarize(reports, sparsity)


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
