"""``benchmarks/compression_sweep.py --report``: results of several files merged by seed,
differences paired with fp32's seeds, and the merged means drawn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def results_file(path: Path, seeds: list[int], rows: dict[str, list[float]]) -> Path:
    """A sweep's output: per variant one run a seed (accuracy; bytes fixed per variant)."""
    body = {
        label: {"runs": [{"final_accuracy": a, "total_bytes": 1000 // (i + 1)} for a in accs]}
        for i, (label, accs) in enumerate(rows.items())
    }
    path.write_text(json.dumps({"setup": {"seeds": seeds, "set": []}, "sst2": body}))
    return path


def test_report_pairs_seeds_across_files_and_draws_the_merged_means(tmp_path) -> None:
    a = results_file(
        tmp_path / "a.json", [0, 1], {"fp32": [0.80, 0.70], "4 bits +EF": [0.79, 0.72]}
    )
    b = results_file(tmp_path / "b.json", [2], {"fp32": [0.60], "4 bits +EF": [0.57]})
    png = tmp_path / "merged.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compression_sweep.py"), "--report",
         str(a), str(b), "--plot", str(png)],
        capture_output=True, text=True, check=True, cwd=ROOT / "benchmarks",
    )  # fmt: skip
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| 4 bits +EF"))
    # seeds 0, 1 from one file and 2 from the other; paired: -1, +2, -3 points
    assert "0.79, 0.72, 0.57" in row and "-0.67 ± 2.52 (3 seeds)" in row
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
