"""Charts as inline SVG strings: paired bars, line charts, histograms, kept-of-total bars, a heatmap."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from compression.report.svg import Svg, nice_ticks, tick_label

INPUT_COLOR = "#94a3b8"
OUTPUT_COLOR = "#2563eb"
PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0891b2"]
GRID = "#e2e8f0"
AXIS = "#64748b"
MUTED = "#64748b"


@dataclass
class PairedBar:
    """One headline figure: input vs output, each with its own text."""

    label: str
    input: float | None
    output: float | None
    input_text: str
    output_text: str
    note: str = ""


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str = OUTPUT_COLOR
    markers: bool = True


@dataclass
class KeptBar:
    label: str
    total: float
    kept: float
    note: str = ""
    color: str = OUTPUT_COLOR


@dataclass
class Histogram:
    name: str
    samples: list[float]
    color: str = OUTPUT_COLOR
    extra: dict[str, float] = field(default_factory=dict)


def paired_bars(rows: list[PairedBar], label: str, width: float = 900) -> str:
    """Two bars per row (input grey, output blue), scaled to the larger of the two."""
    label_w, right_w, bar_h, row_h = 150, 200, 14, 50
    bars_w = width - label_w - right_w
    svg = Svg(width, row_h * len(rows) + 26, label)
    svg.rect(label_w, 6, 10, 10, INPUT_COLOR)
    svg.text(label_w + 14, 15, "input", size=11, fill=MUTED)
    svg.rect(label_w + 64, 6, 10, 10, OUTPUT_COLOR)
    svg.text(label_w + 78, 15, "output", size=11, fill=MUTED)
    for index, row in enumerate(rows):
        top = 26 + index * row_h
        svg.text(0, top + 14, row.label, size=13, bold=True, fill="#0f172a")
        if row.note:
            svg.text(0, top + 31, row.note, size=11, fill=MUTED)
        scale = max(v for v in (row.input, row.output, 0.0) if v is not None) or 1.0
        for offset, value, text, color in (
            (0, row.input, row.input_text, INPUT_COLOR),
            (bar_h + 3, row.output, row.output_text, OUTPUT_COLOR),
        ):
            y = top + 3 + offset
            length = 0.0 if value is None else max(value, 0.0) / scale * bars_w
            svg.rect(label_w, y, bars_w, bar_h, "#f1f5f9")
            if value is not None:
                svg.rect(label_w, y, max(length, 1.5), bar_h, color, tip=text)
            svg.text(label_w + bars_w + 6, y + bar_h - 3, text, size=11, fill="#0f172a")
    return svg.render()


def line_chart(
    series: list[Series],
    label: str,
    y_label: str = "",
    x_label: str = "",
    x_names: dict[int, str] | None = None,
    marker_x: float | None = None,
    marker_text: str = "",
    width: float = 500,
    height: float = 240,
    y_zero: bool = False,
    y_clip: float | None = None,
) -> str:
    """Lines over a shared x axis; `x_names` labels integer x positions (categorical axes).

    Values above `y_clip` are drawn at `y_clip` (spikes stay visible without flattening the rest).
    """
    if y_clip is not None:
        series = [Series(s.name, [(x, min(y, y_clip)) for x, y in s.points], s.color, s.markers) for s in series]
    left, right, top, bottom = 54, 16, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    svg = Svg(width, height, label)
    points = [p for s in series for p in s.points]
    if not points:
        svg.text(width / 2, height / 2, "no data", anchor="middle", fill=MUTED)
        return svg.render()
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    if x_names:  # categorical: room for the first and last labels
        x_lo, x_hi = x_lo - 0.4, x_hi + 0.4
    elif x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    y_ticks = nice_ticks(0.0 if y_zero else min(ys), max(ys), 4)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    if y_hi == y_lo:
        y_hi = y_lo + 1.0

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    for tick in y_ticks:
        svg.line(left, py(tick), left + plot_w, py(tick), GRID)
        svg.text(left - 6, py(tick) + 4, tick_label(tick), anchor="end", size=10, fill=MUTED)
    if x_names:
        x_ticks = [float(x) for x in sorted(x_names)]
    elif x_hi - x_lo <= 12 and all(float(x).is_integer() for x in xs):
        x_ticks = [float(x) for x in range(math.ceil(x_lo), math.floor(x_hi) + 1)]
    else:
        x_ticks = [t for t in nice_ticks(x_lo, x_hi, 6) if x_lo <= t <= x_hi]
    for tick in x_ticks:
        name = x_names.get(int(tick), "") if x_names else tick_label(tick)
        svg.line(px(tick), top + plot_h, px(tick), top + plot_h + 4, AXIS)
        svg.text(px(tick), top + plot_h + 16, name, anchor="middle", size=10, fill=MUTED)
    svg.line(left, top + plot_h, left + plot_w, top + plot_h, AXIS)
    svg.line(left, top, left, top + plot_h, AXIS)
    if x_label:
        svg.text(left + plot_w / 2, height - 6, x_label, anchor="middle", size=11, fill=MUTED)
    if y_label:
        svg.text(left, 14, y_label, size=11, fill=MUTED)
    if marker_x is not None and x_lo <= marker_x <= x_hi:
        svg.line(px(marker_x), top, px(marker_x), top + plot_h, "#16a34a", 1, dash="4 3")
        if marker_text:
            at_right = px(marker_x) > left + plot_w * 0.75
            x = px(marker_x) + (-4 if at_right else 4)
            svg.text(x, top + 10, marker_text, anchor="end" if at_right else "start", size=10, fill="#16a34a")
    legend_x = width - right
    for item in reversed(series):
        legend_x -= 7 * len(item.name) + 26
        svg.rect(legend_x, 6, 10, 10, item.color)
        svg.text(legend_x + 14, 15, item.name, size=11, fill=MUTED)
    for item in series:
        coords = [(px(x), py(y)) for x, y in item.points]
        if len(coords) > 1:
            svg.polyline(coords, item.color, 2 if item.markers else 1.2)
        if item.markers and len(coords) <= 60:
            for (x, y), (cx, cy) in zip(item.points, coords, strict=True):
                tip = f"{item.name}: {tick_label(y)} at {x_names.get(int(x), x) if x_names else tick_label(x)}"
                svg.circle(cx, cy, 3, item.color, tip=tip)
    return svg.render()


def far_fence(samples: list[float]) -> float:
    """Tukey's far-out fence of one model's samples: q3 + 3 IQR."""
    ordered = sorted(samples)
    q1, q3 = ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]
    return q3 + 3 * (q3 - q1)


def histograms(items: list[Histogram], label: str, unit: str = "ms", width: float = 500, height: float = 240) -> str:
    """Overlaid histograms on shared bins; far outliers (beyond q3 + 3 IQR of their model) fold into the last bin."""
    left, right, top, bottom = 44, 16, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    svg = Svg(width, height, label)
    pooled = sorted(v for item in items for v in item.samples)
    if not pooled:
        svg.text(width / 2, height / 2, "no samples", anchor="middle", fill=MUTED)
        return svg.render()
    low = pooled[0]
    high = min(pooled[-1], max(far_fence(item.samples) for item in items if item.samples))
    folded = sum(1 for v in pooled if v > high)
    if high <= low:
        high = low + max(abs(low) * 0.01, 1e-6)
    bins = 30
    width_bin = (high - low) / bins
    counts = []
    for item in items:
        row = [0] * bins
        for value in item.samples:
            row[min(bins - 1, max(0, int((value - low) / width_bin)))] += 1
        counts.append(row)
    peak = max(max(row) for row in counts) or 1
    y_ticks = nice_ticks(0, peak, 4)
    scale_y = plot_h / (y_ticks[-1] or 1)
    for tick in y_ticks:
        y = top + plot_h - tick * scale_y
        svg.line(left, y, left + plot_w, y, GRID)
        svg.text(left - 6, y + 4, tick_label(tick), anchor="end", size=10, fill=MUTED)
    bar_w = plot_w / bins
    for item, row in zip(items, counts, strict=True):
        for index, count in enumerate(row):
            if count:
                lo = low + index * width_bin
                tip = f"{item.name}: {count} run(s) in {lo:.4g}–{lo + width_bin:.4g} {unit}"
                h = count * scale_y
                svg.rect(left + index * bar_w + 0.5, top + plot_h - h, bar_w - 1, h, item.color, tip=tip, opacity=0.55)
    for item in items:
        if item.samples:
            median = sorted(item.samples)[len(item.samples) // 2]
            x = left + min(max((median - low) / (high - low), 0), 1) * plot_w
            svg.line(x, top, x, top + plot_h, item.color, 1.5, dash="5 3")
    for tick in nice_ticks(low, high, 5):
        if low <= tick <= high:
            x = left + (tick - low) / (high - low) * plot_w
            svg.line(x, top + plot_h, x, top + plot_h + 4, AXIS)
            svg.text(x, top + plot_h + 16, tick_label(tick), anchor="middle", size=10, fill=MUTED)
    svg.line(left, top + plot_h, left + plot_w, top + plot_h, AXIS)
    caption = f"{unit} per run (dashed: median)"
    if folded:
        caption += f"; {folded} slower run(s) counted in the last bin"
    svg.text(left + plot_w / 2, height - 6, caption, anchor="middle", size=11, fill=MUTED)
    svg.text(left, 14, "runs", size=11, fill=MUTED)
    legend_x = width - right
    for item in reversed(items):
        legend_x -= 7 * len(item.name) + 26
        svg.rect(legend_x, 6, 10, 10, item.color, opacity=0.55)
        svg.text(legend_x + 14, 15, item.name, size=11, fill=MUTED)
    return svg.render()


def kept_bars(rows: list[KeptBar], label: str, width: float = 640) -> str:
    """Per row: the whole (light) and the part kept (colored), e.g. channels before and after pruning."""
    label_w, right_w, row_h, bar_h = 170, 130, 22, 14
    bars_w = width - label_w - right_w
    svg = Svg(width, row_h * len(rows) + 8, label)
    scale = max((max(r.total, r.kept) for r in rows), default=1.0) or 1.0
    for index, row in enumerate(rows):
        y = 4 + index * row_h
        name = row.label if len(row.label) <= 26 else row.label[:25] + "…"
        svg.text(label_w - 8, y + bar_h - 3, name, anchor="end", size=11, fill="#0f172a")
        svg.rect(label_w, y, row.total / scale * bars_w, bar_h, "#e2e8f0", tip=f"{row.label}: {row.total:g} before")
        svg.rect(label_w, y, row.kept / scale * bars_w, bar_h, row.color, tip=f"{row.label}: {row.kept:g} kept")
        svg.text(label_w + bars_w + 6, y + bar_h - 3, row.note, size=11, fill=MUTED)
    return svg.render()


def heatmap(matrix: list[list[float]], names: list[str], label: str, cell: float = 22) -> str:
    """Rows: input model's top-1 class; columns: output model's. Darker = more samples."""
    n = len(matrix)
    margin = 60
    size = margin + n * cell + 10
    svg = Svg(size, size, label)
    peak = max((max(row) for row in matrix if row), default=1) or 1
    for i, row in enumerate(matrix):
        svg.text(margin - 6, margin + i * cell + cell * 0.7, names[i], anchor="end", size=10, fill=MUTED)
        for j, value in enumerate(row):
            shade = value / peak
            color = OUTPUT_COLOR if i == j else "#dc2626"
            svg.rect(margin + j * cell, margin + i * cell, cell - 1, cell - 1, "#f8fafc")
            if value:
                svg.rect(
                    margin + j * cell, margin + i * cell, cell - 1, cell - 1, color,
                    tip=f"input {names[i]} → output {names[j]}: {value:g}", opacity=0.15 + 0.85 * shade,
                )  # fmt: skip
    for j, name in enumerate(names):
        svg.text(margin + j * cell + cell / 2, margin - 6, name, anchor="middle", size=10, fill=MUTED)
    svg.text(margin, 14, "columns: output top-1 · rows: input top-1", size=11, fill=MUTED)
    return svg.render()
