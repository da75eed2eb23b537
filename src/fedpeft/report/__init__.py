"""Reports: results → Markdown tables and PNG plots (matplotlib, imported lazily)."""

from fedpeft.report.markdown import render_report, write_report

__all__ = ["render_report", "write_report"]
