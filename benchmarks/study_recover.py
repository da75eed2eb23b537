"""Rebuilds the full study's finished runs from its published tables, when their run
folders are lost.

Until 2026-12-06 the study's kept records (``docs/results_full/records/runs/``, now
``docs/results/records/runs/``) matched
``.gitignore``'s ``runs/`` and were never committed: they lived only on the machine that made
them, and a fresh machine found none of the 271 finished runs. What did survive, committed,
is what ``fedpeft experiment`` derives from those folders: ``docs/results_full/results.csv``
(a row per round), ``clients.csv`` (a row per client per round), ``runs.csv`` (a row per run)
and ``personal.csv`` (a row per client scored on its own data). This script writes, for every
run those tables call done, the files the tables are built from — ``metrics.jsonl``,
``clients.jsonl``, ``personal.jsonl`` and a ``summary.json`` marked ``"recovered"`` — so
that the study skips them and its next report includes them.

It does not trust itself: it writes into a staging folder, rebuilds the four tables from
the records and what it staged (``write_tables``, the same code the study uses) and fails,
changing nothing, unless every row of every done run comes back equal, cell for cell, to
the published one; only then are the staged runs moved in. A run the records already hold
finished (a real run folder, or an earlier recovery) is never replaced. What a table does
not hold is not invented: no checkpoints, adapters, partitions or logs; a multi-stage run's
wall time sits on its last stage (the tables only ever add it up); figures of a run's
summary the tables do not use are absent.

    python benchmarks/study_recover.py docs/results docs/results/records
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from fedpeft.experiment import ExperimentDir, Plan, RunState, write_tables
from fedpeft.experiment.table import CLIENTS, RESULTS, RUNS, SCORES
from fedpeft.server.personal import MODELS
from fedpeft.server.store import PERSONAL

FOLDER = "run-recovered"
TABLES = (RESULTS, CLIENTS, RUNS, SCORES)
# the eval figures results.csv holds under their own names; any other is eval.<name>
EVAL_COLUMNS = {"accuracy": "accuracy", "macro_f1": "macro_f1", "eval_loss": "loss"}
ROUND_COPIED = (
    "client_time_s",
    "eval_time_s",
    "sim_time_s",
    "sim_clock_s",
    "bytes_up",
    "bytes_down",
    "wall_time_s",
)
CLIENT_METRICS = ("train_time_s", "train_cpu_s", "mem_rise_bytes", "peak_mem_bytes", "loss")


def _value(cell: str) -> Any:
    """A CSV cell as the JSON value that writes it back: '' → None, '3' → 3, '3.0' → 3.0."""
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    if cell in ("True", "False"):
        return cell == "True"
    return cell


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _metrics_record(row: dict[str, str], rnd: int, clients: list[dict[str, Any]]) -> dict:
    ev = {name: _value(row[col]) for col, name in EVAL_COLUMNS.items() if row[col] != ""}
    for col, cell in row.items():
        if col.startswith("eval.") and cell != "":
            ev[col.removeprefix("eval.")] = _value(cell)
    sampled = int(row["sampled"] or 0)
    ids = [c["client_id"] for c in clients]
    record: dict[str, Any] = {
        "round": rnd,
        "eval": ev,
        # the table keeps how many were sampled; their ids where its client rows say
        "sampled": ids if len(ids) == sampled else list(range(sampled)),
        "accepted": _value(row["accepted"]),
        "rejected": _value(row["rejected"]),
        "train_loss": _value(row["train_loss"]),
    }
    record.update({k: _value(row[k]) for k in ROUND_COPIED})
    return record


def _client_record(row: dict[str, str], rnd: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        k: _value(row[k])
        for k in ("client_id", "tier", "status", "group", "config", "num_examples")
    }
    record.update({k: _value(row[k]) for k in ("bytes_up", "bytes_down", "sim_time_s")})
    record["metrics"] = {k: _value(row[k]) for k in CLIENT_METRICS if row[k] != ""}
    record["round"] = rnd
    return record


def _personal_record(row: dict[str, str], rnd: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        k: _value(row[k]) for k in ("client_id", "group", "status", "num_test", "personal_params")
    }
    models = {m: {"accuracy": _value(row[f"{m}_accuracy"])} for m in MODELS}
    record["models"] = {m: v for m, v in models.items() if v["accuracy"] is not None}
    if record["personal_params"] is None:  # a row that had none
        del record["personal_params"]
    record["round"] = rnd
    return record


def recover(published: Path, records: Path) -> int:
    """Writes the lost runs into a staging folder, verifies the tables rebuild from the
    records with them, and only then moves them into ``records``; a run the records already
    hold finished (a real folder, or an earlier recovery) is left as it is."""
    plan = Plan.from_json(json.loads((records / "experiment.json").read_text(encoding="utf-8")))
    kept = ExperimentDir(records)
    staging = Path(tempfile.mkdtemp(prefix=".recover-", dir=records))
    try:
        written = _write_runs(plan, published, staging, kept)
        _verify(plan, published, records, staging, _done_runs(published))
        (records / "runs").mkdir(exist_ok=True)
        for home in sorted((staging / "runs").glob("*")) if written else []:
            home.rename(records / "runs" / home.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _done_runs(published: Path) -> set[str]:
    return {r["run"] for r in _rows(published / RUNS) if r["state"] == "done"}


def _write_runs(plan: Plan, published: Path, staging: Path, kept: ExperimentDir) -> int:
    """The files of every done run the records do not hold finished, under ``staging``."""
    run_rows = {r["run"]: r for r in _rows(published / RUNS)}
    done = _done_runs(published)
    by_run: dict[str, dict[str, list[dict[str, str]]]] = {
        t: defaultdict(list) for t in (RESULTS, CLIENTS, SCORES)
    }
    for table in by_run:
        for row in _rows(published / table):
            by_run[table][row["run"]].append(row)
    stages: dict[str, list] = defaultdict(list)
    for run in plan.runs:
        stages[run.run_id].append(run)
    written = 0
    for run_id in sorted(done):
        runs = sorted(stages[run_id], key=lambda r: r.stage)
        if all(kept.state(r.key, r.rounds) is RunState.DONE for r in runs):
            continue  # the records hold it: never replaced by a rebuild
        total = run_rows[run_id]
        for i, run in enumerate(runs):
            last = i == len(runs) - 1

            def mine(rows: list[dict[str, str]], run: Any = run) -> list[dict[str, str]]:
                return [r for r in rows if int(r["stage"]) == run.stage]

            def local(row: dict[str, str], run: Any = run) -> int:
                return int(row["round"]) - run.round_offset

            clients: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for row in mine(by_run[CLIENTS][run_id]):
                clients[local(row)].append(_client_record(row, local(row)))
            rounds = [
                _metrics_record(row, local(row), clients[local(row)])
                for row in mine(by_run[RESULTS][run_id])
            ]
            scored = [_personal_record(r, local(r)) for r in mine(by_run[SCORES][run_id])]
            if len(rounds) != run.rounds:
                sys.exit(f"{run.key}: {len(rounds)} rounds in {RESULTS}, planned {run.rounds}.")
            accuracies = [a for r in rounds if (a := r["eval"].get("accuracy")) is not None]
            walls = sum(r["wall_time_s"] or 0.0 for r in rounds)
            first = mine(by_run[RESULTS][run_id])[0]
            summary = {
                "recovered": f"rebuilt by benchmarks/study_recover.py from {published}/*.csv",
                "rounds_completed": len(rounds),
                "final_accuracy": _value(total["final_accuracy"]) if last else accuracies[-1],
                "best_accuracy": max(accuracies) if not last else _value(total["best_accuracy"]),
                "trainable_params": _value(first["trainable_params"]),
                "full_model_bytes": _value(first["full_model_bytes"]),
                "bytes_up_total": sum(r["bytes_up"] or 0 for r in rounds),
                "updates_accepted": sum(r["accepted"] or 0 for r in rounds),
                # the tables add a staged run's wall times up: the whole on the last stage
                "wall_time_s": _value(total["wall_time_s"]) if last else 0.0,
                "peak_rss_bytes": _value(total["peak_rss_bytes"]),
            }
            if not last:
                note = f"{walls:.1f} s in its rounds; the run's total is on its last stage"
                summary["wall_time_s_note"] = note
            folder = staging / "runs" / run.key / FOLDER
            folder.mkdir(parents=True)
            _jsonl(folder / "metrics.jsonl", rounds)
            _jsonl(folder / "clients.jsonl", [c for rnd in sorted(clients) for c in clients[rnd]])
            if scored:
                _jsonl(folder / PERSONAL, scored)
            (folder / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
            written += 1
    return written


def _verify(plan: Plan, published: Path, records: Path, staging: Path, done: set[str]) -> None:
    """Rebuilds the tables from the records and the staged runs; every done run's rows must
    come back as published."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if (records / "runs").is_dir():
            shutil.copytree(records / "runs", root / "runs")
        if (staging / "runs").is_dir():
            shutil.copytree(staging / "runs", root / "runs", dirs_exist_ok=True)
        write_tables(plan, ExperimentDir(root))
        for table in TABLES:
            want = [r for r in _rows(published / table) if r["run"] in done]
            got = [r for r in _rows(root / table) if r["run"] in done]
            if table == RUNS:  # the folder column names where the folders are
                for r in (*want, *got):
                    r.pop("folder")
            if want != got:
                pairs = enumerate(zip(want, got, strict=False))
                bad = next((i for i, (w, g) in pairs if w != g), None)
                detail = (
                    f"{len(want)} published rows, {len(got)} rebuilt"
                    if bad is None
                    else f"first difference: {_diff(want[bad], got[bad])}"
                )
                sys.exit(f"{table}: the rebuilt rows differ from the published ones ({detail}).")
            print(f"{table}: {len(got)} rows of {len(done)} done runs rebuilt equal")


def _diff(want: dict[str, str], got: dict[str, str]) -> str:
    cols = [k for k in {**want, **got} if want.get(k) != got.get(k)]
    return f"run {want.get('run')}: " + ", ".join(
        f"{k} {want.get(k)!r} → {got.get(k)!r}" for k in cols[:4]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("published", type=Path, help="the folder of the published tables")
    ap.add_argument("records", type=Path, help="the records folder (with experiment.json)")
    args = ap.parse_args()
    n = recover(args.published, args.records)
    print(f"recovered {n} run folders into {args.records / 'runs'}")


if __name__ == "__main__":
    main()
