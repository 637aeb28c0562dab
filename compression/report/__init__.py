"""Self-contained HTML report of a compression job, rendered from its metrics (no network, no JS).

html = render_report(metrics, ReportContext(spec=..., datasets=summarize_bundle(bundle), versions=collect_versions()))
"""

from compression.report.context import (
    ArraySummary,
    DatasetSummary,
    ReportContext,
    collect_versions,
    job_context,
    summarize_bundle,
    summarize_dataset,
)
from compression.report.render import render_report, write_report

__all__ = [
    "ArraySummary",
    "DatasetSummary",
    "ReportContext",
    "collect_versions",
    "job_context",
    "render_report",
    "summarize_bundle",
    "summarize_dataset",
    "write_report",
]
