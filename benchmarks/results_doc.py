"""Publishes an experiment's report into the repository: ``docs/results.md`` (a preface,
then the report as ``fedpeft report`` wrote it) with its plots, tables and HTML page under
``docs/results/``. The run folders (adapters, checkpoints) stay where they are.

    .venv/bin/python benchmarks/results_doc.py EXPERIMENT_DIR docs/results.md \
        --preface benchmarks/results_preface.md
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

COPIED = ("results.csv", "clients.csv", "runs.csv", "report.html", "experiment.toml")
OPTIONAL = ("personal.csv",)  # only where some run scored clients on their own data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--preface", type=Path)
    args = ap.parse_args()
    exp: Path = args.experiment
    assets = args.out.with_suffix("")  # docs/results.md → docs/results/
    shutil.rmtree(assets / "plots", ignore_errors=True)  # no plot of an earlier publication
    (assets / "plots").mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copy2(exp / name, assets / name)
    for name in OPTIONAL:
        if (exp / name).exists():
            shutil.copy2(exp / name, assets / name)
    for png in sorted((exp / "plots").glob("*.png")):
        shutil.copy2(png, assets / "plots" / png.name)
    report = (exp / "report.md").read_text(encoding="utf-8")
    report = report.replace("](plots/", f"]({assets.name}/plots/")
    lines = report.splitlines()
    body = "\n".join(lines[1:]).lstrip("\n")  # the preface brings its own title
    preface = args.preface.read_text(encoding="utf-8") if args.preface else ""
    args.out.write_text(preface.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {assets}/")


if __name__ == "__main__":
    main()
