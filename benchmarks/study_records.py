"""Keep a long experiment's finished runs between machines that do not last.

The full study (examples/proposal.toml) needs more hours than one of our work sessions
lasts, and each session starts on a fresh machine. ``save`` copies every finished logical
run (all its stages done) out of an experiment folder into a records folder — the files
the tables and the report are built from (``summary.json``, ``metrics.jsonl``,
``clients.jsonl``, ``personal.jsonl``, ``partitions.json``, ``config.toml``, the run's log
and config), not its checkpoints, adapters or event files — and ``restore`` copies them back
into a fresh experiment folder, where ``fedpeft experiment`` finds them done and skips them.

    python benchmarks/study_records.py save /work/proposal-run docs/results/records
    python benchmarks/study_records.py restore docs/results/records /work/proposal-run

A restored run is trusted only when its ``summary.json`` parses and covers its planned
rounds (the runner's own test); ``restore`` never overwrites a run already there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from fedpeft.experiment import ExperimentDir, RunState

KEPT = (
    "summary.json",
    "metrics.jsonl",
    "clients.jsonl",
    "personal.jsonl",  # clients scored on their own data (personal.csv)
    "partitions.json",
    "config.toml",
)


def _plan(root: Path) -> dict:
    path = root / "experiment.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: no readable plan ({e}); run `fedpeft experiment` there first.")


def _done(root: Path, run: dict) -> bool:
    """The runner's own test: a summary that covers the run's planned rounds."""
    return ExperimentDir(root).state(run["key"], run["rounds"]) is RunState.DONE


def _logical(plan: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in plan["runs"]:
        out.setdefault(run["run_id"], []).append(run)
    return out


def _copy_run(src: Path, dst: Path, key: str) -> None:
    home = src / "runs" / key
    folder = sorted(p for p in home.glob("run-*") if p.is_dir())[-1]
    target = dst / "runs" / key / folder.name
    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (folder / name).is_file():
            shutil.copy2(folder / name, target / name)
    if (home / "log.txt").is_file():
        shutil.copy2(home / "log.txt", dst / "runs" / key / "log.txt")
    config = src / "configs" / f"{key}.toml"
    if config.is_file():
        (dst / "configs").mkdir(parents=True, exist_ok=True)
        shutil.copy2(config, dst / "configs" / config.name)


def save(exp: Path, records: Path) -> None:
    plan = _plan(exp)
    saved = 0
    for stages in _logical(plan).values():
        if not all(_done(exp, r) for r in stages):
            continue  # a staged run's later stage needs the earlier one's adapter: all or none
        for r in stages:
            if not _done(records, r):
                _copy_run(exp, records, r["key"])
                saved += 1
    for name in ("experiment.toml", "experiment.json"):
        shutil.copy2(exp / name, records / name)
    total = sum(_done(records, r) for r in plan["runs"])
    print(f"saved {saved} new runs; {records} holds {total} of the plan's {len(plan['runs'])}")


def restore(records: Path, exp: Path) -> None:
    plan = _plan(records)
    restored = 0
    for stages in _logical(plan).values():
        if not all(_done(records, r) for r in stages) or any(_done(exp, r) for r in stages):
            continue
        for r in stages:
            shutil.rmtree(exp / "runs" / r["key"], ignore_errors=True)  # a killed attempt
            _copy_run(records, exp, r["key"])
            restored += 1
    for name in ("experiment.toml", "experiment.json"):  # a running grid's plan is kept
        if not (exp / name).exists():
            shutil.copy2(records / name, exp / name)
    print(f"restored {restored} finished runs into {exp}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="copy finished runs from EXPERIMENT into RECORDS")
    s.add_argument("experiment", type=Path)
    s.add_argument("records", type=Path)
    r = sub.add_parser("restore", help="copy finished runs from RECORDS into EXPERIMENT")
    r.add_argument("records", type=Path)
    r.add_argument("experiment", type=Path)
    args = parser.parse_args()
    if args.command == "save":
        args.records.mkdir(parents=True, exist_ok=True)
        save(args.experiment, args.records)
    else:
        args.experiment.mkdir(parents=True, exist_ok=True)
        restore(args.records, args.experiment)


if __name__ == "__main__":
    main()
