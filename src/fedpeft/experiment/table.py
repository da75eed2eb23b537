"""The experiment's tidy tables, built from its runs' folders (``metrics.jsonl``,
``clients.jsonl``, ``summary.json``):

- ``results.csv`` — one row per round of every run: the run's variant, seed and labels,
  the round (a staged variant's later stages continue the numbering), its evaluation
  (every metric the run logged, ``eval.<name>`` beyond the usual ones), bytes, times
  (wall, client, simulated) with running totals, and per-round client cost figures;
- ``clients.csv`` — one row per client per round: tier, status, bytes, time, memory;
- ``runs.csv`` — one row per run: its state and its summary;
- ``personal.csv`` — one row per client per round its clients were scored on their own
  held-out share (``personal.jsonl``): each model's accuracy (global, personalised,
  local-only, fully personalised).

A run that scored its clients also gets, in ``results.csv`` at each scored round and in
``runs.csv`` from its last, the clients' mean accuracy under each model
(``personal.<model>_accuracy``, every client counting once) and ``personal.over_full``:
the mean personalised accuracy (the global's where no personal model was scored) over the
mean fully personalised one — the proposal's fourth outcome, per run.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedpeft.experiment.columns import CLIENT, ID, ROUND, RUN, SCORE
from fedpeft.experiment.layout import ExperimentDir, read_json
from fedpeft.experiment.plan import Plan, PlannedRun
from fedpeft.server.personal import MODELS, personal_summary
from fedpeft.server.store import PERSONAL

RESULTS, CLIENTS, RUNS, SCORES = "results.csv", "clients.csv", "runs.csv", "personal.csv"
EVAL_KNOWN = {"accuracy", "macro_f1", "loss"}


def write_tables(
    plan: Plan, folder: ExperimentDir, failed: dict[str, str] | None = None
) -> dict[str, int]:
    """Writes the four tables; returns their row counts."""
    failed = failed or {}
    rounds, clients, runs, scores = [], [], [], []
    for stages in _logical_runs(plan.runs).values():
        head = _identity(plan, stages[0])
        cum: dict[str, float] = {"up": 0.0, "down": 0.0, "wall": 0.0, "sent": 0.0, "senders": 0}
        summaries: list[dict[str, Any]] = []
        personal: dict[str, Any] = {}
        for run in stages:
            run_folder = folder.run_folder(run.key)
            if run_folder is None:
                continue
            summary = read_json(run_folder / "summary.json") or {}
            summaries.append(summary)
            by_round = _clients_by_round(run_folder / "clients.jsonl")
            scored = [r for r in _jsonl(run_folder / PERSONAL) if isinstance(r.get("round"), int)]
            by_scored = _personal_rounds(scored)
            for record in _jsonl(run_folder / "metrics.jsonl"):
                row = _round_row(record, by_round.get(record.get("round"), []), summary, cum)
                row.update(
                    head, stage=run.stage, round=_int(record.get("round")) + run.round_offset
                )
                row.update(by_scored.get(_int(record.get("round")), {}))
                rounds.append(row)
            for c in (c for cs in by_round.values() for c in cs):
                row = {**head, **_client_row(c), "stage": run.stage}
                row["round"] = _int(c.get("round")) + run.round_offset
                clients.append(row)
            for r in scored:
                row = {**head, **_score_row(r), "stage": run.stage}
                scores.append(row | {"round": r["round"] + run.round_offset})
            personal = by_scored[max(by_scored)] if by_scored else personal
        runs.append({**head, **_run_row(stages, summaries, folder, failed, cum), **personal})
    axes = plan.axes
    _write(folder.root / RESULTS, rounds, [*ID, *axes, *ROUND])
    _write(folder.root / CLIENTS, clients, [*ID, *axes, *CLIENT])
    _write(folder.root / RUNS, runs, [*ID, *axes, *RUN])
    _write(folder.root / SCORES, scores, [*ID, *axes, *SCORE])
    return {RESULTS: len(rounds), CLIENTS: len(clients), RUNS: len(runs), SCORES: len(scores)}


def _logical_runs(runs: Iterable[PlannedRun]) -> dict[str, list[PlannedRun]]:
    out: dict[str, list[PlannedRun]] = {}
    for run in runs:
        out.setdefault(run.run_id, []).append(run)
    return {k: sorted(v, key=lambda r: r.stage) for k, v in out.items()}


def _identity(plan: Plan, run: PlannedRun) -> dict[str, Any]:
    variant = plan.variants[run.variant]
    return {
        "run": run.run_id,
        "variant": run.variant,
        "role": variant.role,
        "seed": run.seed,
        **run.labels,
    }


def _round_row(
    record: dict[str, Any],
    clients: list[dict[str, Any]],
    summary: dict[str, Any],
    cum: dict[str, float],
) -> dict[str, Any]:
    e: dict[str, Any] = record["eval"] if isinstance(record.get("eval"), dict) else {}
    up, down, wall = (
        _num(record.get("bytes_up")),
        _num(record.get("bytes_down")),
        _num(record.get("wall_time_s")),
    )
    cum["up"] += up or 0.0
    cum["down"] += down or 0.0
    cum["wall"] += wall or 0.0
    raw_sampled = record.get("sampled")
    sampled = raw_sampled if isinstance(raw_sampled, list) else []
    ok = [c for c in clients if c.get("status") == "ok"]
    # bytes per client that sent an update, accepted or not (a rejected reply was sent too)
    sent = [b for c in clients if (b := _num(c.get("bytes_up"))) is not None and b > 0]
    if sent:
        per_client: float | None = sum(sent) / len(sent)
        cum["sent"] += sum(sent)
        cum["senders"] += len(sent)
    else:  # no client records: the accepted ones
        per_client = up / len(ok) if up is not None and ok else None
    times = [t for c in ok if (t := _num(_metric(c, "train_time_s"))) is not None]
    cpu = [t for c in ok if (t := _num(_metric(c, "train_cpu_s"))) is not None]
    rises = [m for c in ok if (m := _num(_metric(c, "mem_rise_bytes"))) is not None]
    peaks = [m for c in ok if (m := _num(_metric(c, "peak_mem_bytes"))) is not None]
    row: dict[str, Any] = {
        "accuracy": _num(e.get("accuracy")),
        "macro_f1": _num(e.get("macro_f1")),
        "eval_loss": _num(e.get("loss")),
        "train_loss": _num(record.get("train_loss")) if record.get("accepted") else None,
        "sampled": len(sampled),
        "accepted": record.get("accepted"),
        "rejected": record.get("rejected"),
        "bytes_up": up,
        "bytes_down": down,
        "cum_bytes_up": cum["up"],
        "cum_bytes_down": cum["down"],
        "bytes_up_per_client": per_client,
        "wall_time_s": wall,
        "cum_wall_time_s": cum["wall"],
        "client_time_s": _num(record.get("client_time_s")),
        "eval_time_s": _num(record.get("eval_time_s")),
        "sim_time_s": _num(record.get("sim_time_s")),
        "sim_clock_s": _num(record.get("sim_clock_s")),
        "client_train_time_mean_s": sum(times) / len(times) if times else None,
        "client_train_time_max_s": max(times, default=None),
        "client_train_cpu_mean_s": sum(cpu) / len(cpu) if cpu else None,
        "client_mem_rise_max_bytes": max(rises, default=None),
        "client_peak_mem_max_bytes": max(peaks, default=None),
        "trainable_params": summary.get("trainable_params"),
        "full_model_bytes": summary.get("full_model_bytes"),
    }
    for name, value in e.items():  # personalisation, privacy, instruction metrics, …
        if name not in EVAL_KNOWN and _num(value) is not None:
            row[f"eval.{name}"] = value
    return row


def _personal_rounds(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per round its clients were scored: their mean accuracy under each model and the
    personalised ÷ fully personalised ratio (``personal_summary``)."""
    ok = [r for r in rows if r.get("status") != "ok" or isinstance(r.get("models"), dict)]
    out: dict[int, dict[str, Any]] = {}
    for rnd in sorted({r["round"] for r in ok}):
        s = personal_summary(ok, rnd)
        if s is None or not s["models"]:
            continue
        figures: dict[str, Any] = {"personal.clients": s["clients_scored"]}
        for name, spread in s["models"].items():
            figures[f"personal.{name}_accuracy"] = spread["mean"]
        out[rnd] = figures | {"personal.over_full": s["personal_over_full"]}
    return out


def _score_row(r: dict[str, Any]) -> dict[str, Any]:
    models = r["models"] if isinstance(r.get("models"), dict) else {}
    row = {k: r.get(k) for k in ("client_id", "group", "status", "num_test", "personal_params")}
    for name in MODELS:
        m = models.get(name)
        row[f"{name}_accuracy"] = _num(m.get("accuracy")) if isinstance(m, dict) else None
    return row


def _client_row(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "client_id": c.get("client_id"),
        "tier": c.get("tier") or "",
        "status": c.get("status"),
        "group": c.get("group"),
        "config": c.get("config"),
        "num_examples": c.get("num_examples"),
        "bytes_up": c.get("bytes_up"),
        "bytes_down": c.get("bytes_down"),
        "train_time_s": _num(_metric(c, "train_time_s")),
        "train_cpu_s": _num(_metric(c, "train_cpu_s")),
        "mem_rise_bytes": _num(_metric(c, "mem_rise_bytes")),
        "peak_mem_bytes": _num(_metric(c, "peak_mem_bytes")),
        "sim_time_s": _num(c.get("sim_time_s")),
        "loss": _num(_metric(c, "loss")),
    }


def _run_row(
    stages: list[PlannedRun],
    summaries: list[dict[str, Any]],
    folder: ExperimentDir,
    failed: dict[str, str],
    cum: dict[str, float],
) -> dict[str, Any]:
    last = summaries[-1] if len(summaries) == len(stages) else {}
    done = all(folder.state(r.key, r.rounds).value == "done" for r in stages)
    errors = [failed[r.key] for r in stages if r.key in failed]
    state = "done" if done else ("failed" if errors else "incomplete")
    up = [_num(s.get("bytes_up_total")) or 0.0 for s in summaries]  # a damaged one: none
    client_rounds = [_int(s.get("updates_accepted")) for s in summaries]
    per_client = (
        cum["sent"] / cum["senders"]
        if cum["senders"]
        else (sum(up) / sum(client_rounds) if sum(client_rounds) else None)
    )
    full = _num(last.get("full_model_bytes"))
    return {
        "state": state,
        "stages": len(stages),
        "rounds_completed": sum(_int(s.get("rounds_completed")) for s in summaries),
        "final_accuracy": last.get("final_accuracy"),
        "best_accuracy": max(
            (a for s in summaries if (a := _num(s.get("best_accuracy"))) is not None), default=None
        ),
        "bytes_up_per_client_round": per_client,
        "up_fraction_of_full_model": per_client / full if per_client is not None and full else None,
        "trainable_params": last.get("trainable_params"),
        "full_model_bytes": last.get("full_model_bytes"),
        "wall_time_s": sum(_num(s.get("wall_time_s")) or 0.0 for s in summaries)
        if summaries
        else None,
        "peak_rss_bytes": max((_int(s.get("peak_rss_bytes")) for s in summaries), default=None),
        "folder": ";".join(str(folder.run_folder(r.key) or "") for r in stages),
        "error": " | ".join(errors),
    }


def _clients_by_round(path: Path) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for c in _jsonl(path):
        out.setdefault(c.get("round"), []).append(c)
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue  # a line a killed run left half-written, or a damaged one
        if isinstance(value, dict):
            out.append(value)
    return out


def _write(path: Path, rows: list[dict[str, Any]], first: list[str]) -> None:
    extra = sorted({k for row in rows for k in row} - set(first))
    columns = [*first, *extra]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    tmp.replace(path)


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def _metric(client: dict[str, Any], name: str) -> Any:
    m = client.get("metrics")
    return m.get(name) if isinstance(m, dict) else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
