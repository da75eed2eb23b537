"""Reports: results → Markdown/JSON tables and PNG plots (matplotlib, imported lazily)."""
