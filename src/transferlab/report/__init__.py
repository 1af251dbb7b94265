"""The report of a run: ``summary.json`` numbers, ``report.md``, ``report.html`` and ``figures/*.png``.

``build_summary(results, scores)`` computes every number (with
:mod:`transferlab.stats`) as a JSON-serialisable dict; ``write_report(run_dir,
results, summary, config, metadata)`` writes the document, the browsable
page (:mod:`.html`: the examples, a pair's tokens and audit, per-pair plots)
and the figures.
The warnings (interventions that never fired, conditions that differ in more
than their plan) come first in the document, in bold.
"""

from .alerts import generation_warnings
from .audit import audit_summary
from .common import ReportError, jsonable
from .figures import make_figures
from .html import html_data, render_html, write_html
from .markdown import md_table, render_markdown, write_report
from .rv import rv_prompt_table
from .summary import build_summary

__all__ = [
    "ReportError",
    "audit_summary",
    "build_summary",
    "generation_warnings",
    "html_data",
    "jsonable",
    "make_figures",
    "md_table",
    "render_html",
    "render_markdown",
    "rv_prompt_table",
    "write_html",
    "write_report",
]
