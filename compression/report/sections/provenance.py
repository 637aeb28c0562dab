"""What produced the result: the spec, the datasets and the library versions."""

from __future__ import annotations

import json
from typing import Any

from compression.report.context import DatasetSummary
from compression.report.markup import badge, esc, note, pre, table, tag
from compression.report.values import as_dict

SPEC_MAX_CHARS = 20_000


def render_spec(spec: dict[str, Any] | None) -> str:
    if not spec:
        return note("The spec was not given to the report.")
    text = json.dumps(spec, indent=2, default=str)
    if len(text) > SPEC_MAX_CHARS:
        text = text[:SPEC_MAX_CHARS] + "\n…"
    return pre(text)


def _arrays(summary: DatasetSummary) -> str:
    return "<br>".join(
        tag("code", esc(name)) + " " + esc(f"[{', '.join(str(d) for d in info.shape)}] {info.dtype}")
        for name, info in summary.arrays.items()
    )


def render_datasets(datasets: list[DatasetSummary], metrics: dict[str, Any]) -> str:
    named = any(d.name for d in datasets)
    rows = [
        [
            esc(d.role),
            *([esc(d.name or "")] if named else []),
            esc(d.n_samples if d.n_samples is not None else "–"),
            _arrays(d),
            esc("yes" if d.has_labels else "no"),
            badge("synthetic", "warn") if d.synthetic else badge("uploaded", "neutral"),
        ]
        for d in datasets
    ]
    fidelity = as_dict(metrics.get("fidelity"))
    if fidelity.get("synthetic") and not any(d.role == "eval" for d in datasets):
        rows.append(
            [esc("eval"), *([esc("(none given)")] if named else []), esc(fidelity.get("n_samples", "–")),
             esc("none given: drawn from the model's declared input shapes"), esc("no"), badge("synthetic", "warn")]
        )  # fmt: skip
    if not rows:
        return note("No datasets listed.")
    headers = ["role", *(["name"] if named else []), "samples", "arrays (shape, dtype)", "labels", "source"]
    return table(headers, rows, numeric={2 if named else 1})


def render_versions(versions: dict[str, str]) -> str:
    if not versions:
        return note("Library versions were not recorded.")
    return table(["library", "version"], [[esc(k), tag("code", esc(v))] for k, v in versions.items()], cls="compact")
