"""Per output: how close the output model's tensors are to the input model's, and top-1 agreement."""

from __future__ import annotations

from typing import Any

from compression.report.charts import heatmap
from compression.report.markup import collapsible, esc, fmt_num, fmt_pct, meter, note, para, table, tag
from compression.report.values import as_dict, as_float, as_int, as_list

KNOWN_COLUMNS = {
    "cosine": "cosine",
    "min_channel_cosine": "worst channel cosine",
    "worst_sample_cosine": "worst sample cosine",
    "top1_agreement": "top-1 agreement",
    "max_abs_diff": "max |diff|",
    "mean_abs_diff": "mean |diff|",
}
FRACTIONS = {"cosine", "min_channel_cosine", "worst_sample_cosine", "top1_agreement"}
MAX_CONFUSION_CLASSES = 40


def _confusion(name: str, output: dict[str, Any]) -> str:
    matrix = [[as_float(v) or 0.0 for v in as_list(row)] for row in as_list(output.get("confusion"))]
    if not matrix or len(matrix) > MAX_CONFUSION_CLASSES or any(len(row) != len(matrix) for row in matrix):
        return ""
    classes = [str(c) for c in as_list(output.get("classes"))]
    names = classes if len(classes) == len(matrix) else [str(i) for i in range(len(matrix))]
    return tag("div", heatmap(matrix, names, f"top-1 confusion of output '{name}'"), cls="figure")


def _agreement_sentence(name: str, agreement: float | None, n_samples: int | None) -> str:
    if agreement is None:
        return ""
    changed = f" ({round((1 - agreement) * n_samples)} of {n_samples} samples change class)" if n_samples else ""
    return f"'{name}': the output model picks the same top-1 class as the input model on {fmt_pct(agreement, 2)} of samples{changed}."


def render_outputs(metrics: dict[str, Any]) -> str:
    fidelity = as_dict(metrics.get("fidelity"))
    outputs = {str(k): as_dict(v) for k, v in as_dict(fidelity.get("outputs")).items()}
    if not outputs:
        return note("No per-output fidelity was recorded.")
    n_samples = as_int(fidelity.get("n_samples"))
    source = "synthetic inputs drawn from the declared shapes" if fidelity.get("synthetic") else "the eval data"
    html = para(
        f"Input and output models run on {n_samples if n_samples is not None else 'the'} samples of {source}; each output compared tensor to tensor."
    )
    extra = sorted(
        {k for o in outputs.values() for k, v in o.items() if k not in KNOWN_COLUMNS and as_float(v) is not None}
    )
    columns = [k for k in KNOWN_COLUMNS if any(k in o for o in outputs.values())] + extra
    rows = []
    for name, output in outputs.items():
        row = [esc(name)]
        for key in columns:
            value = output.get(key)
            cell = esc(fmt_num(value, 5))
            if key in FRACTIONS and as_float(value) is not None:
                cell = meter(value) + " " + esc(fmt_num(value, 5))
            row.append(cell)
        rows.append(row)
    html += table(
        ["output", *(KNOWN_COLUMNS.get(k, k) for k in columns)], rows, numeric=set(range(1, len(columns) + 1))
    )
    html += note(
        "“–” means not applicable: worst channel cosine is measured for outputs with a small last axis, top-1 agreement for class-score outputs."
    )
    sentences = [_agreement_sentence(n, as_float(o.get("top1_agreement")), n_samples) for n, o in outputs.items()]
    html += "".join(para(s) for s in sentences if s)
    for name, output in outputs.items():
        html += _confusion(name, output)
        nested = {k: v for k, v in output.items() if isinstance(v, dict | list) and k not in ("confusion", "classes")}
        for key, value in nested.items():
            rows = [
                [esc(k), esc(fmt_num(v, 5))]
                for k, v in (value.items() if isinstance(value, dict) else enumerate(value))
            ][:100]
            html += collapsible(f"'{name}': {key}", table(["slice", "value"], rows, numeric={1}))
    return html
