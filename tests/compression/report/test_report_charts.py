"""The SVG writer and charts: degenerate inputs draw something sensible, text is escaped, ticks cover the data."""

from __future__ import annotations

import pytest
from report_helpers import parse

from compression.report.charts import (
    Histogram,
    KeptBar,
    PairedBar,
    Series,
    heatmap,
    histograms,
    kept_bars,
    line_chart,
    paired_bars,
)
from compression.report.svg import nice_ticks


@pytest.mark.parametrize(("low", "high"), [(0, 8.23), (0.6, 1.0), (0.98, 1.0), (3, 3), (-2, 5), (1e-6, 3e-5)])
def test_ticks_cover_the_range(low: float, high: float) -> None:
    ticks = nice_ticks(low, high, 4)
    assert ticks[0] <= low and ticks[-1] >= high and len(ticks) <= 12
    assert ticks == sorted(ticks)


def test_charts_draw_degenerate_inputs() -> None:
    charts = [
        line_chart([], "empty"),
        line_chart([Series("one", [(1.0, 2.0)])], "one point"),
        line_chart([Series("flat", [(0.0, 1.0), (1.0, 1.0)])], "flat", x_names={0: "a", 1: "b"}),
        histograms([Histogram("same", [1.0] * 10)], "identical samples"),
        histograms([Histogram("none", [])], "no samples"),
        histograms([Histogram("tail", [1.0] * 50 + [100.0])], "far outlier"),
        paired_bars([PairedBar("x", None, 0.0, "–", "0")], "missing values"),
        kept_bars([KeptBar("<layer>", 0, 0)], "zero channels"),
        heatmap([[0]], ["a"], "one class"),
    ]
    for svg in charts:
        parse(svg)
        assert svg.startswith("<svg") and "nan" not in svg.lower()
    assert "1 slower run(s) counted in the last bin" in charts[5]
    assert "&lt;layer&gt;" in charts[7]
