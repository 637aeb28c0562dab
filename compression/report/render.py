"""The whole report: one self-contained HTML page (inline CSS and SVG, no scripts, nothing fetched)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from compression.jsonable import to_jsonable
from compression.report.context import ReportContext
from compression.report.markup import badge, esc, note, section, tag
from compression.report.sections.headline import render_headline
from compression.report.sections.latency import render_latency
from compression.report.sections.outputs import render_outputs
from compression.report.sections.provenance import render_datasets, render_spec, render_versions
from compression.report.sections.steps import render_steps
from compression.report.style import CSS

STATUS_KIND = {"succeeded": "good", "done": "good", "failed": "bad", "canceled": "warn", "running": "neutral"}
SECTIONS = (
    ("summary", "Summary"),
    ("steps", "Steps"),
    ("outputs", "Outputs"),
    ("latency", "Latency"),
    ("provenance", "Spec, data, versions"),
)


def _safe(render: Callable[[], str]) -> str:
    """A section that cannot be drawn says so; the rest of the report still renders."""
    try:
        return render()
    except Exception as exc:
        return note(f"This section could not be drawn from these metrics ({type(exc).__name__}: {exc}).")


def _header(context: ReportContext) -> str:
    title = "Compression report" + (f": {context.title}" if context.title else "")
    meta = []
    if context.job_id:
        meta.append(esc(f"job {context.job_id}"))
    if context.status:
        meta.append(badge(context.status, STATUS_KIND.get(context.status.lower(), "neutral")))
    if context.created_at:
        meta.append(esc(f"created {context.created_at}"))
    meta.append(esc(f"report generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}"))
    html = tag("h1", esc(title)) + tag("p", " · ".join(meta), cls="meta")
    if context.error:
        html += tag("p", tag("b", "The job failed: ") + esc(context.error), cls="callout bad")
    nav = "".join(tag("a", esc(name), href=f"#{anchor}") for anchor, name in SECTIONS)
    return tag("header", html) + tag("nav", nav)


def render_report(metrics: dict[str, Any] | BaseModel | None, context: ReportContext | None = None) -> str:
    """HTML of a job's report from its metrics (JobMetrics or its JSON form; partial or empty is fine)."""
    context = context or ReportContext()
    if isinstance(metrics, BaseModel):
        metrics = to_jsonable(metrics)
    data: dict[str, Any] = metrics if isinstance(metrics, dict) else {}
    body = _header(context)
    body += section("summary", "Summary", _safe(lambda: render_headline(data)))
    body += section("steps", "Steps", _safe(lambda: render_steps(data)))
    body += section("outputs", "Outputs: fidelity to the input model", _safe(lambda: render_outputs(data)))
    body += section("latency", "Latency", _safe(lambda: render_latency(data)))
    provenance = (
        tag("h3", "Spec")
        + _safe(lambda: render_spec(context.spec))
        + tag("h3", "Datasets")
        + _safe(lambda: render_datasets(context.datasets, data))
        + tag("h3", "Versions")
        + _safe(lambda: render_versions(context.versions))
    )
    body += section("provenance", "Spec, data, versions", provenance)
    body += tag(
        "footer", esc("Self-contained report: inline CSS and SVG, no scripts, nothing loaded from the network.")
    )
    title = "Compression report" + (f" – {context.title}" if context.title else "")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def write_report(path: Path, metrics: dict[str, Any] | BaseModel | None, context: ReportContext | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(metrics, context), encoding="utf-8")
    return path
