"""Reports: report.json (machine-readable), report.md (a readable table)."""

from calib.report.run_report import render_markdown, write_run_report

__all__ = ["render_markdown", "write_run_report"]
