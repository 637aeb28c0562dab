"""prune: groups pruned or left intact (with the reason), channels per layer before and after."""

from __future__ import annotations

from typing import Any

from compression.report.charts import INPUT_COLOR, OUTPUT_COLOR, KeptBar, kept_bars
from compression.report.markup import (
    badge,
    collapsible,
    esc,
    fmt_bytes,
    fmt_count,
    fmt_pct,
    fmt_ratio,
    meter,
    para,
    table,
    tag,
)
from compression.report.values import as_dict, as_float, as_int, as_list, as_texts, dig

MAX_ROWS = 200
MAX_CHART_ROWS = 60
OPEN_ROWS = 30
STATUS_KIND = {"pruned": "good", "kept": "neutral", "skipped": "warn"}


def _before_after(details: dict[str, Any]) -> str:
    before, after = as_dict(details.get("before")), as_dict(details.get("after"))
    if not before and not after:
        return ""
    rows = []
    for key, label, fmt in (
        ("size_bytes", "size", fmt_bytes),
        ("gzip_bytes", "gzip size", fmt_bytes),
        ("parameters", "parameters", fmt_count),
        ("macs", "MACs per sample", fmt_count),
    ):
        b, a = as_float(before.get(key)), as_float(after.get(key))
        if b is None and a is None:
            continue
        ratio = a / b if a is not None and b else None
        rows.append([esc(label), esc(fmt(b)), esc(fmt(a)), esc(fmt_ratio(ratio))])
    return table(["", "before", "after", "ratio"], rows, cls="compact", numeric={1, 2, 3}) if rows else ""


def _producers(group: dict[str, Any]) -> str:
    return ", ".join(as_texts(group.get("producers"))) or "?"


def _group_row(group: dict[str, Any]) -> list[str]:
    channels, kept = as_int(group.get("channels")), as_int(group.get("kept"))
    status = str(group.get("status") or "?")
    return [
        esc(_producers(group)),
        badge(status, STATUS_KIND.get(status, "neutral")),
        esc(channels if channels is not None else "–"),
        esc(kept if kept is not None else "–"),
        esc(group.get("reason") or ("" if status == "pruned" else "–")),
    ]


def _structured(details: dict[str, Any]) -> str:
    removed, prunable = as_int(details.get("channels_removed")), as_int(details.get("channels_prunable"))
    pruned, total = as_int(details.get("groups_pruned")), as_int(details.get("groups_total"))
    parts = []
    if removed is not None and prunable:
        parts.append(f"removed {removed} of {prunable} prunable channels ({fmt_pct(removed / prunable)})")
    if pruned is not None and total is not None:
        parts.append(f"in {pruned} of {total} channel groups")
    requested = details.get("requested_sparsity")
    if requested is not None:
        parts.append(f"requested sparsity {fmt_pct(requested, 0)}")
    for key, label in (("macs_ratio", "MACs"), ("parameter_ratio", "parameters"), ("latency_ratio", "latency")):
        if as_float(details.get(key)) is not None:
            parts.append(f"{label} {fmt_ratio(details[key])}")
    if details.get("round_to_used") is not None:
        parts.append(f"channel counts rounded to multiples of {details['round_to_used']}")
    html = para("Structured pruning " + ", ".join(parts) + ".") if parts else ""
    groups = [as_dict(g) for g in as_list(details.get("groups"))]
    bars = []
    for group in groups[:MAX_CHART_ROWS]:
        channels, kept = as_int(group.get("channels")), as_int(group.get("kept"))
        if channels is not None and kept is not None:
            color = OUTPUT_COLOR if group.get("status") == "pruned" else INPUT_COLOR
            bars.append(KeptBar(_producers(group), channels, kept, f"{channels} → {kept}", color))
    if bars:
        html += tag("div", kept_bars(bars, "channels per layer before (grey) and kept (blue)"), cls="figure")
        if len(groups) > len(bars):
            html += para(f"The chart shows the first {len(bars)} groups; the table lists more.", cls="note")
    headers = ["layer(s) producing the channels", "status", "channels before", "after", "reason"]
    rows = [_group_row(group) for group in groups[:MAX_ROWS]]
    if len(groups) > OPEN_ROWS:  # long lists: the intact groups in view, every group one click away
        intact = [group for group in groups if group.get("status") != "pruned"]
        if intact:
            html += tag("h4", esc(f"Left intact ({len(intact)})"))
            html += table(headers, [_group_row(group) for group in intact[:MAX_ROWS]], numeric={2, 3})
        html += collapsible(f"All groups ({len(groups)})", table(headers, rows, numeric={2, 3}))
    elif rows:
        html += table(headers, rows, numeric={2, 3})
    if len(groups) > MAX_ROWS:
        html += para(f"… and {len(groups) - MAX_ROWS} more groups (all in metrics.json).", cls="note")
    if not groups:
        skipped = [as_dict(s) for s in as_list(details.get("skipped"))]
        if skipped:
            html += table(
                ["left intact", "reason"],
                [
                    [esc(", ".join(as_texts(s.get("producers")))), esc(s.get("reason") or "")]
                    for s in skipped[:MAX_ROWS]
                ],
            )
    return html


def _unstructured(details: dict[str, Any]) -> str:
    parts = []
    if details.get("requested_sparsity") is not None:
        parts.append(f"requested sparsity {fmt_pct(details['requested_sparsity'], 0)}")
    if details.get("achieved_sparsity") is not None:
        parts.append(f"achieved {fmt_pct(details['achieved_sparsity'])} of the pruned layers' weights")
    if details.get("pruned_weights") is not None:
        parts.append(f"{fmt_count(details['pruned_weights'])} weights set to zero")
    gzip_before, gzip_after = dig(details, "before", "gzip_bytes"), dig(details, "after", "gzip_bytes")
    if as_float(gzip_before) and as_float(gzip_after) is not None:
        parts.append(f"gzip size {fmt_ratio(gzip_after / gzip_before)} (raw size stays: zeros are stored)")
    html = para("Unstructured pruning: " + ", ".join(parts) + ".") if parts else ""
    layers = as_dict(details.get("layers"))
    rows = [
        [
            esc(name),
            esc(fmt_count(dig(info, "weights"))),
            meter(dig(info, "sparsity")) + " " + esc(fmt_pct(dig(info, "sparsity"))),
        ]
        for name, info in list(layers.items())[:MAX_ROWS]
    ]
    skipped = as_dict(details.get("skipped_layers"))
    rows += [
        [esc(name), "–", badge("intact", "warn") + " " + esc(reason)]
        for name, reason in list(skipped.items())[:MAX_ROWS]
    ]
    if rows:
        html += table(["layer", "weights", "sparsity (or why intact)"], rows, numeric={1})
    if len(layers) + len(skipped) > 2 * MAX_ROWS:
        html += para("… more layers in metrics.json.", cls="note")
    return html


def render_prune(details: dict[str, Any], step: dict[str, Any]) -> str:
    if details.get("groups") is not None or details.get("channels_removed") is not None:
        html = _structured(details)
    else:
        html = _unstructured(details)
    batchnorm = details.get("batchnorm_recalibrated")
    if isinstance(batchnorm, list) and batchnorm:
        html += para(
            f"BatchNormalization statistics re-estimated for {len(batchnorm)} node(s): {', '.join(map(str, batchnorm[:20]))}."
        )
    elif isinstance(batchnorm, str):
        html += para(f"BatchNormalization statistics not re-estimated: {batchnorm}.")
    return html + _before_after(details)
