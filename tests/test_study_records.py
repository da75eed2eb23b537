"""The full study's kept records (docs/results/records): committed, and they rebuild
the published tables.

Until 2026-12-06 ``.gitignore``'s ``runs/`` matched ``records/runs/``: the finished runs were
never committed and a fresh machine lost all 271 (``benchmarks/study_recover.py`` rebuilt
them from the published tables)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fedpeft.experiment import ExperimentDir, Plan, RunState, write_tables

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "docs" / "results"
RECORDS = PUBLISHED / "records"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_records_are_not_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    probe = RECORDS / "runs" / "some-run" / "run-1" / "summary.json"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(probe)], cwd=ROOT, check=False
    ).returncode
    assert ignored == 1, f"git ignores {probe.relative_to(ROOT)}: the records would be lost"


def test_records_rebuild_the_published_tables(tmp_path: Path) -> None:
    plan = Plan.from_json(json.loads((RECORDS / "experiment.json").read_text("utf-8")))
    records = ExperimentDir(RECORDS)
    done_keys = {r.key for r in plan.runs if records.state(r.key, r.rounds) is RunState.DONE}
    by_id: dict[str, list[str]] = {}
    for r in plan.runs:
        by_id.setdefault(r.run_id, []).append(r.key)
    done = {i for i, keys in by_id.items() if set(keys) <= done_keys}
    published_done = {r["run"] for r in _rows(PUBLISHED / "runs.csv") if r["state"] == "done"}
    assert len(done) >= 253
    assert done == published_done, "records and the published runs.csv disagree on what is done"
    shutil.copytree(RECORDS / "runs", tmp_path / "runs")
    write_tables(plan, ExperimentDir(tmp_path))
    for table in ("results.csv", "clients.csv", "runs.csv", "personal.csv"):
        want = [r for r in _rows(PUBLISHED / table) if r["run"] in done]
        got = [r for r in _rows(tmp_path / table) if r["run"] in done]
        for r in (*want, *got):
            r.pop("folder", None)  # where the folders were
        assert len(got) == len(want) and got == want, table
