"""Per step: what it did, wall time, size and fidelity after it, and the step type's own figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from compression.report.charts import INPUT_COLOR, PALETTE, Series, line_chart
from compression.report.markup import badge, collapsible, esc, fmt_bytes, fmt_count, fmt_pct, fmt_s, note, pre, tag
from compression.report.sections.distill import render_distill
from compression.report.sections.prune import render_prune
from compression.report.sections.quantize import render_quantize
from compression.report.values import as_dict, as_float, as_list, dig

RAW_DETAILS_MAX_CHARS = 20_000
StepRenderer = Callable[[dict[str, Any], dict[str, Any]], str]
RENDERERS: dict[str, StepRenderer] = {"prune": render_prune, "distill": render_distill, "quantize": render_quantize}


def _quality(fidelity: dict[str, Any]) -> tuple[float | None, float | None]:
    """(accuracy of the model, top-1 agreement with the job's input) from a step's fidelity."""
    return as_float(dig(fidelity, "accuracy", "output")), as_float(fidelity.get("top1_agreement"))


def render_trend(metrics: dict[str, Any]) -> str:
    """Accuracy / agreement and size after each step: where the quality went and where the bytes went."""
    steps = [as_dict(s) for s in as_list(metrics.get("steps"))]
    if not steps:
        return ""
    names = {0: "input"} | {i + 1: f"{s.get('index', i)}: {s.get('type', '?')}" for i, s in enumerate(steps)}
    accuracy_in = as_float(dig(metrics, "input", "accuracy"))
    if accuracy_in is None:
        accuracy_in = next(
            (as_float(dig(s, "fidelity", "accuracy", "input")) for s in steps if dig(s, "fidelity")), None
        )
    acc_points = [(0.0, accuracy_in)] if accuracy_in is not None else []
    agree_points: list[tuple[float, float]] = [(0.0, 1.0)]
    size_in = as_float(dig(metrics, "input", "size_bytes"))
    size_points = [(0.0, size_in / 1e3)] if size_in is not None else []
    last_acc, last_agree = accuracy_in, 1.0
    for position, step in enumerate(steps, start=1):
        fidelity = as_dict(step.get("fidelity"))
        if step.get("changed") and fidelity:
            last_acc, last_agree = _quality(fidelity)
        if last_acc is not None:
            acc_points.append((float(position), last_acc))
        if last_agree is not None:
            agree_points.append((float(position), last_agree))
        size = as_float(step.get("size_bytes"))
        if size is not None:
            size_points.append((float(position), size / 1e3))
    quality = [Series("top-1 agreement", agree_points, PALETTE[1])]
    if len(acc_points) > 1:
        quality.insert(0, Series("accuracy", acc_points, PALETTE[0]))
    charts = line_chart(quality, "accuracy and agreement after each step", y_label="fraction", x_names=names)
    if len(size_points) > 1:
        charts += line_chart(
            [Series("size", size_points, INPUT_COLOR)], "size after each step", "kB", x_names=names, y_zero=True
        )
    return tag("div", charts, cls="figure row")


def _summary_line(step: dict[str, Any]) -> str:
    fidelity = as_dict(step.get("fidelity"))
    accuracy, agreement = _quality(fidelity)
    parts = [f"wall time {fmt_s(step.get('wall_time_s'))}"]
    if as_float(step.get("size_bytes")) is not None:
        parts.append(f"size after {fmt_bytes(step.get('size_bytes'))}")
    if as_float(step.get("parameters")) is not None:
        parts.append(f"parameters {fmt_count(step.get('parameters'))}")
    if accuracy is not None:
        parts.append(f"accuracy {fmt_pct(accuracy, 2)}")
    if agreement is not None:
        parts.append(f"top-1 agreement with the input {fmt_pct(agreement, 2)}")
    if not fidelity and step.get("changed") is False:
        parts.append("model unchanged: fidelity as before")
    return tag("p", esc(" · ".join(parts)), cls="facts")


def _raw(details_: dict[str, Any]) -> str:
    """The step's details as indented JSON, encoded only up to RAW_DETAILS_MAX_CHARS (sensitivity tables get long)."""
    if not details_:
        return ""
    chunks, size = [], 0
    for chunk in json.JSONEncoder(indent=1, default=str).iterencode(details_):
        chunks.append(chunk)
        size += len(chunk)
        if size > RAW_DETAILS_MAX_CHARS:
            chunks.append("\n… (cut here: the whole document is in metrics.json)")
            break
    return collapsible("all figures of this step (JSON)", pre("".join(chunks)))


def render_step(step: dict[str, Any], position: int) -> str:
    """`position` is the step's place in the spec (0-based, as the CLI's progress and the job's events name it)."""
    kind = str(step.get("type") or "step")
    step_details = as_dict(step.get("details"))
    method = step_details.get("method") or step_details.get("mode")
    title = f"step {step.get('index', position)}: {kind}" + (f" · {method}" if method else "")
    if step.get("changed") is True:
        state = badge("changed the model", "good")
    elif step_details.get("input_model_returned"):
        state = badge("returned its input model", "warn")
    elif step.get("changed") is False:
        state = badge("unchanged", "neutral")
    else:
        state = badge("no result", "bad")
    head = tag("h3", esc(title) + " " + state)
    renderer = RENDERERS.get(kind)
    try:
        body = renderer(step_details, step) if renderer else ""
    except Exception as exc:  # a details shape this report does not know must not hide the rest
        body = note(f"These figures could not be drawn ({type(exc).__name__}); see the JSON below.")
    if not step_details:
        body = note("This step recorded no details.")
    return tag("article", head + _summary_line(step) + body + _raw(step_details), cls="step")


def render_steps(metrics: dict[str, Any]) -> str:
    steps = [as_dict(s) for s in as_list(metrics.get("steps"))]
    if not steps:
        return note("No step finished.")
    return render_trend(metrics) + "".join(render_step(step, i) for i, step in enumerate(steps))
