"""quantize: the budget verdict, what was kept in float and why, the per-node sensitivity ranking."""

from __future__ import annotations

from typing import Any

from compression.report.markup import (
    badge,
    collapsible,
    esc,
    fmt_bytes,
    fmt_ms,
    fmt_points,
    fmt_ratio,
    meter,
    note,
    para,
    table,
    tag,
)
from compression.report.values import as_dict, as_float, as_list, as_texts

MAX_SENSITIVITY_ROWS = 40
MAX_FLOAT_ROWS = 100
MAX_ATTEMPT_ROWS = 30


def _budget_line(summary: dict[str, Any], budget: dict[str, Any]) -> str:
    rules = []
    if as_float(budget.get("max_accuracy_drop")) is not None:
        rules.append(f"{summary.get('budget_metric') or 'accuracy'} drop ≤ {budget['max_accuracy_drop'] * 100:g} pt")
    if as_float(budget.get("min_output_cosine")) is not None:
        rules.append(f"every output's cosine ≥ {budget['min_output_cosine']:g}")
    if as_float(budget.get("min_channel_cosine")) is not None:
        rules.append(f"every channel's cosine ≥ {budget['min_channel_cosine']:g}")
    verdict = summary.get("within_budget")
    attempts = summary.get("quantization_attempts")
    result = (
        badge("within budget", "good")
        if verdict is True
        else badge("outside budget", "bad")
        if verdict is False
        else ""
    )
    drop = as_float(summary.get("drop"))
    text = "Quantized candidate: " if summary.get("input_model_returned") else ""
    text += "Budget: " + (", ".join(rules) if rules else "not recorded") + ". "
    if drop is not None:
        text += f"Change on this step's input: {fmt_points(drop)} {summary.get('budget_metric') or ''}. ".replace(
            " .", "."
        )
    if attempts is not None:
        text += f"{attempts} quantization attempt(s)."
    html = tag("p", esc(text) + " " + result)
    reasons = as_texts(summary.get("reasons"))
    if reasons:
        html += tag("ul", "".join(tag("li", esc(r)) for r in reasons), cls="reasons")
    return html


def _float_reasons(summary: dict[str, Any]) -> dict[str, str]:
    """node -> why it was kept in float, from the search's own records."""
    why: dict[str, str] = {}
    history = [as_dict(a) for a in as_list(summary.get("attempt_history"))]
    user = set(as_texts(history[0].get("kept_float"))) if history else set()
    first_reasons = "; ".join(as_texts(history[0].get("reasons"))) if history else ""
    collapsed = set(as_texts(summary.get("kept_float_for_collapsed_outputs")))
    for node in as_texts(summary.get("nodes_kept_float")):
        if node in user:
            why[node] = "listed in nodes_to_exclude"
        elif node in collapsed:
            why[node] = "produces an output that collapsed when quantized" + (
                f" ({first_reasons})" if first_reasons else ""
            )
        else:
            why[node] = "among the most sensitive nodes; needed to meet the budget" + (
                f" (fully quantized: {first_reasons})" if first_reasons else ""
            )
    small = as_dict(summary.get("small_convs"))
    if small.get("kept_float"):
        timing = ""
        if as_float(small.get("latency_ms_float")) is not None and as_float(small.get("latency_ms_int8")) is not None:
            timing = f": {fmt_ms(small['latency_ms_float'])} float vs {fmt_ms(small['latency_ms_int8'])} int8"
        for node in as_texts(small.get("nodes")):
            why.setdefault(node, f"Conv with a tiny reduction, measured faster in float{timing}")
    return why


def _search(summary: dict[str, Any], budget: dict[str, Any]) -> str:
    html = _budget_line(summary, budget)
    ranking = [as_dict(s) for s in as_list(summary.get("sensitivity"))]
    op_types = {str(s.get("node")): str(s.get("op_type") or "") for s in ranking}
    why = _float_reasons(summary)
    if why:
        rows = [
            [esc(node), esc(op_types.get(node, "")), esc(reason)] for node, reason in list(why.items())[:MAX_FLOAT_ROWS]
        ]
        html += tag("h4", esc(f"Kept in float ({len(why)})")) + table(["node", "op", "why"], rows)
        if len(why) > MAX_FLOAT_ROWS:
            html += note(f"… and {len(why) - MAX_FLOAT_ROWS} more (all in metrics.json).")
    else:
        html += para("Every candidate node was quantized (none kept in float).")
    if ranking:
        peak = max((as_float(s.get("error")) or 0.0 for s in ranking), default=0.0) or 1.0
        rows = []
        for rank, entry in enumerate(ranking[:MAX_SENSITIVITY_ROWS], start=1):
            node = str(entry.get("node"))
            error, local = as_float(entry.get("error")), as_float(entry.get("local_error"))
            rows.append(
                [
                    esc(rank),
                    esc(node),
                    esc(entry.get("op_type") or ""),
                    meter(None if local is None else local / peak, "warm") + " " + esc(_sci(local)),
                    meter(None if error is None else error / peak, "out") + " " + esc(_sci(error)),
                    badge("float", "warn") if node in why else "",
                ]
            )
        html += tag("h4", esc("Sensitivity ranking (most sensitive first)"))
        html += para(
            "Error = 1 − cosine of the node's output against the float model's with every candidate quantized; "
            "local error = what the node adds over the worst of its inputs (the ranking key)."
        )
        html += table(["#", "node", "op", "local error", "error at its output", ""], rows, numeric={0}, cls="ranking")
        if len(ranking) > MAX_SENSITIVITY_ROWS:
            html += note(
                f"… {len(ranking) - MAX_SENSITIVITY_ROWS} less sensitive nodes not shown (all in metrics.json)."
            )
    history = [as_dict(a) for a in as_list(summary.get("attempt_history"))]
    if len(history) > 1:
        rows = [
            [
                esc(index),
                esc(len(as_list(a.get("kept_float")))),
                badge("ok", "good") if a.get("ok") else badge("rejected", "bad"),
                esc(fmt_points(a.get("drop"))),
                esc("; ".join(as_texts(a.get("reasons")))),
            ]
            for index, a in enumerate(history[:MAX_ATTEMPT_ROWS], start=1)
        ]
        html += collapsible(
            f"Attempts ({len(history)})",
            table(["attempt", "nodes in float", "verdict", "change", "reasons"], rows, numeric={0, 1}),
        )
    return html


def _sci(value: float | None) -> str:
    return "–" if value is None else ("0" if value == 0 else f"{value:.2e}")


def _preparation(details_: dict[str, Any]) -> str:
    facts = []
    if details_.get("preprocessed"):
        facts.append("pre-processed (shape inference, graph optimization)")
    for key, label in (
        ("constants_lifted", "Constant weights lifted to initializers"),
        ("gemm_rewritten", "Gemm nodes rewritten as MatMul"),
        ("conv_int8_storage", "Conv weights stored int8, computed float"),
        ("nodes_named", "unnamed nodes given names"),
    ):
        if details_.get(key):
            facts.append(f"{label}: {details_[key]}")
    if details_.get("per_channel_fallback"):
        facts.append(f"per-channel fallback: {details_['per_channel_fallback']}")
    if as_float(details_.get("bytes_saved_by_compaction")):
        facts.append(f"{fmt_bytes(details_['bytes_saved_by_compaction'])} saved by compacting QDQ bookkeeping")
    if details_.get("synthetic_calibration"):
        facts.append("calibrated on synthetic inputs (no calibration data)")
    unknown = as_texts(details_.get("unknown_nodes_to_exclude"))
    if unknown:
        facts.append(f"nodes_to_exclude names no node: {', '.join(unknown[:20])}")
    if as_float(details_.get("latency_ratio")) is not None:
        confirmed = as_float(details_.get("latency_ratio_confirmed"))
        timing = ""
        if as_float(details_.get("latency_ms")) is not None and as_float(details_.get("input_latency_ms")) is not None:
            timing = f"{fmt_ms(details_['latency_ms'])} vs {fmt_ms(details_['input_latency_ms'])} for the input, "
        confirmed_text = f", confirmed {fmt_ratio(confirmed)} in a longer run" if confirmed is not None else ""
        facts.append(f"speed check: {timing}latency {fmt_ratio(details_['latency_ratio'])}{confirmed_text}")
    return tag("ul", "".join(tag("li", esc(f)) for f in facts), cls="facts-list") if facts else ""


def _candidates(details_: dict[str, Any], budget: dict[str, Any]) -> str:
    plan = as_texts(details_.get("plan"))
    html = ""
    if plan:
        html += tag("p", esc("auto tried:")) + tag("ul", "".join(tag("li", esc(p)) for p in plan))
    candidates = [as_dict(c) for c in as_list(details_.get("candidates"))]
    chosen = details_.get("chosen")
    if not candidates:
        return html
    rows = []
    for candidate in candidates:
        mode = str(candidate.get("mode") or "?")
        verdict = candidate.get("within_budget")
        rows.append(
            [
                esc(mode) + (" " + badge("chosen", "good") if mode == chosen else ""),
                badge("yes", "good") if verdict else badge("no", "bad"),
                esc(fmt_points(candidate.get("drop"))),
                esc(fmt_ms(candidate.get("latency_ms"))),
                esc(fmt_ratio(candidate.get("latency_ratio"))),
                esc(fmt_ratio(candidate.get("size_ratio"))),
                esc("; ".join(as_texts(candidate.get("reasons")))),
            ]
        )
    html += table(
        ["candidate", "within budget", "change", "latency", "latency ratio", "size ratio", "reasons"],
        rows,
        numeric={2, 3, 4, 5},
    )
    for candidate in candidates:
        if candidate.get("mode") != chosen and (candidate.get("sensitivity") or candidate.get("nodes_kept_float")):
            html += collapsible(f"{candidate.get('mode')}: budget search and sensitivity", _search(candidate, budget))
    return html


def render_quantize(details_: dict[str, Any], step: dict[str, Any]) -> str:
    budget = as_dict(details_.get("budget"))
    html = ""
    reason = details_.get("reason")
    if reason:
        html += tag("p", esc(reason), cls="callout warn")
    if details_.get("mode") == "auto":
        html += _candidates(details_, budget)
        if details_.get("chosen"):
            html += tag("h4", esc(f"Chosen: {details_['chosen']}")) + _search(details_, budget)
    elif details_.get("within_budget") is not None or details_.get("sensitivity") or details_.get("nodes_kept_float"):
        html += _search(details_, budget)
    html += _preparation(details_)
    return html
