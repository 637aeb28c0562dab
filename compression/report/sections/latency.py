"""Latency of input and output models: distributions of the interleaved runs, or median and p90."""

from __future__ import annotations

from typing import Any

from compression.report.charts import INPUT_COLOR, OUTPUT_COLOR, Histogram, Series, far_fence, histograms, line_chart
from compression.report.markup import esc, fmt_ms, note, table, tag
from compression.report.values import as_dict, as_floats, dig

MAX_TRACE_POINTS = 400


def _trace(samples: list[float]) -> list[tuple[float, float]]:
    """Run order vs milliseconds, thinned to at most MAX_TRACE_POINTS points."""
    stride = max(1, len(samples) // MAX_TRACE_POINTS)
    return [(float(i), v) for i, v in enumerate(samples) if i % stride == 0]


def render_latency(metrics: dict[str, Any]) -> str:
    stats = {"input": as_dict(dig(metrics, "input", "latency")), "output": as_dict(dig(metrics, "output", "latency"))}
    if not any(stats.values()):
        return note("Latency was not measured (the job did not reach its final evaluation).")
    rows = [
        [tag("b", esc(name)), esc(fmt_ms(s.get("median_ms"))), esc(fmt_ms(s.get("p90_ms"))), esc(fmt_ms(s.get("mean_ms"))),
         esc(s.get("runs", "–")), esc(s.get("batch_size", "–")), esc(s.get("threads", "–"))]
        for name, s in stats.items() if s
    ]  # fmt: skip
    html = table(["model", "median", "p90", "mean", "runs", "batch", "threads"], rows, numeric={1, 2, 3, 4, 5, 6})
    samples = {name: as_floats(s.get("samples_ms")) for name, s in stats.items()}
    colors = {"input": INPUT_COLOR, "output": OUTPUT_COLOR}
    if any(samples.values()):
        charts = histograms(
            [Histogram(name, values, colors[name]) for name, values in samples.items() if values],
            "latency distribution",
        )
        pooled = [v for values in samples.values() for v in values]
        clip = min(max(pooled), max(far_fence(values) for values in samples.values() if values))
        spikes = sum(1 for v in pooled if v > clip)
        y_label = "ms" + (f" ({spikes} runs > {clip:.3g} ms clipped)" if spikes else "")
        charts += line_chart(
            [Series(name, _trace(values), colors[name], markers=False) for name, values in samples.items() if values],
            "latency per run, in run order",
            y_label=y_label,
            x_label="run (input and output alternate, so machine noise hits both alike)",
            y_clip=clip if spikes else None,
        )
        html += tag("div", charts, cls="figure row")
    else:
        html += note("These metrics carry no per-run samples; median and p90 only.")
    return html
