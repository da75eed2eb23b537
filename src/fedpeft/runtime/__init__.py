"""Runtimes: ``local`` (in-process simulation, the default) and ``flower`` (issue #6)."""
