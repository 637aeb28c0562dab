"""Headline: size, parameters, latency and accuracy (or fidelity) of input vs output, as numbers and bars."""

from __future__ import annotations

from typing import Any

from compression.report.charts import PairedBar, paired_bars
from compression.report.markup import (
    esc,
    fmt_bytes,
    fmt_count,
    fmt_ms,
    fmt_pct,
    fmt_points,
    fmt_ratio,
    fmt_s,
    note,
    tag,
)
from compression.report.values import as_dict, as_float, dig


def _change(ratio: float | None, lower_is_better: bool = True) -> tuple[str, str]:
    """'0.55× (−45%)' and a good/bad class."""
    if ratio is None:
        return "–", "neutral"
    change = (ratio - 1) * 100
    good = change < 0 if lower_is_better else change > 0
    kind = "neutral" if abs(change) < 2 else ("good" if good else "bad")
    return f"{fmt_ratio(ratio)} ({change:+.0f}%)", kind


def _card(title: str, before: str, after: str, change: str, kind: str, sub: str = "") -> str:
    body = (
        tag("div", esc(title), cls="card-title")
        + tag(
            "div",
            tag("span", esc(before), cls="before") + " → " + tag("span", esc(after), cls="after"),
            cls="card-value",
        )
        + tag("div", esc(change), cls=f"card-change {kind}")
        + (tag("div", esc(sub), cls="card-sub") if sub else "")
    )
    return tag("div", body, cls="card")


def _ratio(new: Any, old: Any) -> float | None:
    new_f, old_f = as_float(new), as_float(old)
    return None if new_f is None or not old_f else new_f / old_f


def quality_figure(metrics: dict[str, Any]) -> tuple[str, float | None, float | None, str]:
    """(name, input value, output value, how measured): accuracy on labels, else top-1 agreement, else cosine."""
    fidelity = as_dict(metrics.get("fidelity"))
    samples = dig(fidelity, "n_samples")
    data = "synthetic inputs" if fidelity.get("synthetic") else "eval data"
    where = f"{samples} samples of {data}" if samples is not None else data
    accuracy = as_dict(fidelity.get("accuracy"))
    acc_in = as_float(accuracy.get("input", dig(metrics, "input", "accuracy")))
    acc_out = as_float(accuracy.get("output", dig(metrics, "output", "accuracy")))
    if acc_in is not None or acc_out is not None:
        return "accuracy", acc_in, acc_out, f"top-1 on labels, {where}"
    agreement = as_float(fidelity.get("top1_agreement"))
    if agreement is not None:
        return "top-1 agreement", 1.0, agreement, f"output's top-1 = input's top-1, {where}"
    cosines = [as_float(dig(o, "cosine")) for o in as_dict(fidelity.get("outputs")).values()]
    worst = min((c for c in cosines if c is not None), default=None)
    if worst is not None:
        return "worst output cosine", 1.0, worst, f"cosine of output vs input tensors, {where}"
    return "accuracy", None, None, "not measured"


def render_headline(metrics: dict[str, Any]) -> str:
    size_in, size_out = dig(metrics, "input", "size_bytes"), dig(metrics, "output", "size_bytes")
    par_in, par_out = dig(metrics, "input", "parameters"), dig(metrics, "output", "parameters")
    lat_in, lat_out = as_dict(dig(metrics, "input", "latency")), as_dict(dig(metrics, "output", "latency"))
    if not any(v is not None for v in (size_in, size_out, par_in, par_out)) and not lat_in and not lat_out:
        return note("No headline figures: the job produced no final metrics (it failed or has not finished).")
    ratios = as_dict(metrics.get("ratios"))
    size_ratio = as_float(ratios.get("size")) or _ratio(size_out, size_in)
    par_ratio = as_float(ratios.get("parameters")) or _ratio(par_out, par_in)
    med_in, med_out = as_float(lat_in.get("median_ms")), as_float(lat_out.get("median_ms"))
    lat_ratio = as_float(ratios.get("latency")) or _ratio(med_out, med_in)
    quality, q_in, q_out, q_how = quality_figure(metrics)

    def latency_text(stats: dict[str, Any]) -> str:
        median, p90 = stats.get("median_ms"), stats.get("p90_ms")
        return f"{fmt_ms(median)} (p90 {fmt_ms(p90)})" if as_float(p90) is not None else fmt_ms(median)

    runs = lat_in.get("runs") or lat_out.get("runs")
    lat_sub = (
        f"median of {runs} interleaved runs, batch {lat_in.get('batch_size', '?')}, {lat_in.get('threads', '?')} thread(s)"
        if runs
        else ""
    )
    size_change, size_kind = _change(size_ratio)
    par_change, par_kind = _change(par_ratio)
    lat_change, lat_kind = _change(lat_ratio)
    drop = None if q_in is None or q_out is None else q_in - q_out
    q_kind = "neutral" if drop is None or abs(drop) < 0.005 else ("bad" if drop > 0 else "good")
    q_change = "–" if drop is None else fmt_points(drop)
    cards = (
        _card("Size", fmt_bytes(size_in), fmt_bytes(size_out), size_change, size_kind)
        + _card("Parameters", fmt_count(par_in), fmt_count(par_out), par_change, par_kind)
        + _card("Latency (median)", fmt_ms(med_in), fmt_ms(med_out), lat_change, lat_kind, lat_sub)
        + _card(quality.capitalize(), fmt_pct(q_in, 2), fmt_pct(q_out, 2), q_change, q_kind, q_how)
    )
    bars = [
        PairedBar("Size", as_float(size_in), as_float(size_out), fmt_bytes(size_in), fmt_bytes(size_out), size_change),
        PairedBar("Parameters", as_float(par_in), as_float(par_out), fmt_count(par_in), fmt_count(par_out), par_change),
        PairedBar("Latency", med_in, med_out, latency_text(lat_in), latency_text(lat_out), lat_change),
        PairedBar(quality.capitalize(), q_in, q_out, fmt_pct(q_in, 2), fmt_pct(q_out, 2), q_change),
    ]
    wall = metrics.get("wall_time_s")
    footer = note(f"Whole job: {fmt_s(wall)} wall time.") if as_float(wall) is not None else ""
    return tag("div", cards, cls="cards") + tag("div", paired_bars(bars, "input vs output"), cls="figure") + footer
