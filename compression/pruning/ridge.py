"""Ridge least squares from accumulated Gram sums: rows are added in chunks, then solved toward a start point."""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_GROWTH = 1e3  # a fitted weight norm this many times the current one counts as ill-conditioned


def add_rows(stats: dict[str, Any], key: str, x: np.ndarray, t: np.ndarray, intercept: bool) -> None:
    """Add rows to the Gram sums (products in float32, a few hundred rows at a time; sums in float64)."""
    xa = np.asarray(x, dtype=np.float32)
    if intercept:
        xa = np.concatenate([xa, np.ones((len(xa), 1), dtype=np.float32)], axis=1)
    t32 = np.asarray(t, dtype=np.float32)
    gram, cross = (xa.T @ xa).astype(np.float64), (xa.T @ t32).astype(np.float64)
    squares = float(np.sum(np.square(t32, dtype=np.float64)))
    if key in stats:
        g, c, tt, n = stats[key]
        stats[key] = (g + gram, c + cross, tt + squares, n + len(xa))
    else:
        stats[key] = (gram, cross, squares, len(xa))


def squared_error(w: np.ndarray, stats: tuple) -> float:
    """||X w - t||^2 from the Gram sums (X^T X, X^T t, t^T t)."""
    gram, cross, tt, _ = stats
    return float(np.sum(w * (gram @ w)) - 2 * np.sum(w * cross) + tt)


def solve_ridge(gram: np.ndarray, cross: np.ndarray, start: np.ndarray, penalty: np.ndarray) -> np.ndarray | None:
    """argmin ||X W - T||^2 + sum_i penalty_i ||W_i - start_i||^2 from the Gram sums; None when unstable."""
    try:
        solved = np.linalg.solve(gram + np.diag(penalty), cross + penalty[:, None] * start)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(solved)):
        return None
    reference = np.linalg.norm(start) or 1.0
    return solved if np.linalg.norm(solved) <= MAX_GROWTH * reference else None
