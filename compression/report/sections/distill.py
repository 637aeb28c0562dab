"""distill: train/eval loss and the eval metric per epoch, teacher vs student before and after."""

from __future__ import annotations

from typing import Any

from compression.report.charts import PALETTE, Series, line_chart
from compression.report.markup import esc, fmt_bytes, fmt_count, fmt_ms, fmt_pct, fmt_s, para, table, tag
from compression.report.values import as_dict, as_float, as_int, as_list, dig

METRIC_NAMES = {
    "accuracy": "eval accuracy",
    "teacher_agreement": "agreement with the teacher",
    "neg_loss": "−eval loss",
}


def _curves(details: dict[str, Any]) -> str:
    curve = [as_dict(row) for row in as_list(details.get("loss_curve"))]
    train, evaluation, metric = [], [], []
    for position, row in enumerate(curve):
        epoch = as_float(row.get("epoch"))
        epoch = float(position) if epoch is None else epoch
        for key, points in (("train_loss", train), ("eval_loss", evaluation), ("eval_metric", metric)):
            value = as_float(row.get(key))
            if value is not None:
                points.append((epoch, value))
    if not (train or evaluation or metric):
        return ""
    best = as_float(details.get("best_epoch"))
    marker = f"kept: epoch {best:g}" if best is not None else ""
    losses = [
        s for s in (Series("train loss", train, PALETTE[0]), Series("eval loss", evaluation, PALETTE[1])) if s.points
    ]
    charts = ""
    if losses:
        charts += line_chart(
            losses,
            "distillation loss per epoch",
            "loss",
            "epoch (0 = before training)",
            marker_x=best,
            marker_text=marker,
            y_zero=True,
        )
    if metric:
        name = METRIC_NAMES.get(str(details.get("eval_metric")), str(details.get("eval_metric") or "eval metric"))
        charts += line_chart(
            [Series(name, metric, PALETTE[2])],
            f"{name} per epoch",
            name,
            "epoch (0 = before training)",
            marker_x=best,
            marker_text=marker,
        )
    return tag("div", charts, cls="figure row")


def render_distill(details: dict[str, Any], step: dict[str, Any]) -> str:
    curve = as_list(details.get("loss_curve"))
    epochs = max((as_int(dig(row, "epoch")) or 0 for row in curve), default=0)
    losses = ", ".join(
        f"{dig(loss, 'output')}: {dig(loss, 'kind')}{' + cross-entropy on labels' if dig(loss, 'labels') else ''}"
        for loss in as_list(details.get("losses"))
    )
    parts = [
        f"trained the {'current model' if details.get('student') in (None, 'current') else 'uploaded student'} against the input model for {epochs} epoch(s)"
    ]
    if losses:
        parts.append(f"losses {losses}")
    if details.get("best_epoch") is not None:
        parts.append(
            f"kept epoch {details['best_epoch']} (selected by {details.get('selected_by', '?')} on {details.get('selected_on', '?')} data)"
        )
    if as_float(details.get("seconds_per_epoch")) is not None:
        parts.append(f"{fmt_s(details['seconds_per_epoch'])} per epoch")
    if details.get("trainable_parameters") is not None:
        parts.append(f"{fmt_count(details['trainable_parameters'])} trainable parameters")
    html = para("Distillation " + "; ".join(parts) + ".")
    html += _curves(details)
    teacher, before, after = (as_dict(details.get(k)) for k in ("teacher", "student_before", "student_after"))
    if teacher or before or after:
        rows = [
            [tag("b", esc(name)), esc(fmt_bytes(d.get("size_bytes"))), esc(fmt_count(d.get("parameters"))),
             esc(fmt_ms(d.get("latency_ms"))), esc(fmt_pct(d.get("accuracy"), 2)), esc(fmt_pct(d.get("top1_agreement"), 2))]
            for name, d in (("teacher (input model)", teacher), ("student before", before), ("student after", after))
            if d
        ]  # fmt: skip
        html += table(
            ["", "size", "parameters", "latency", "accuracy", "agreement with teacher"], rows, numeric={1, 2, 3, 4, 5}
        )
    return html
