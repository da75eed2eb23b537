"""Shared by the benchmark scripts: run `fedpeft run` in a fresh process, read its folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_fedpeft(out: Path, tag: str, sets: list[str]) -> Path:
    """Runs ``fedpeft run`` with ``--set`` overrides into ``out``; returns the run folder."""
    cmd = [
        sys.executable,
        "-m",
        "fedpeft.cli.main",
        "run",
        "--set",
        f"run.output_dir='{out}'",
        "--set",
        f"run.name='{tag}'",
    ]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fedpeft run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return sorted(out.glob(f"{tag}-*"))[-1]


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary.json, metrics.jsonl rows) of a finished run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, rounds
