"""Dropouts: every device unavailable in a round with probability 10 / 30 / 100 %
(``simulation.devices = true``, a tier whose ``availability`` is 0.9 / 0.7 / 0.0, drawn
from a generator seeded by (run seed, round, client)), synchronous with ``server.min_clients``
1, 3 and 8, and asynchronous (FedBuff, buffer 2, 3 in flight).

Per setting: the dropout that happened, rounds completed, rounds without quorum,
accepted updates, final accuracy, and whether ``fedpeft report`` renders the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import TINY, merged, read_jsonl

CLIENTS, ROUNDS = 10, 10
BASE = (
    f"data.num_clients={CLIENTS}",
    f"run.rounds={ROUNDS}",
    "data.train_size=160",
    "data.partition='iid'",
    "simulation.devices=true",
)
ASYNC = ("server.mode='async'", "server.buffer_size=2", "server.max_concurrency=3")


def _tiers(path: Path, availability: float) -> Path:
    path.write_text(f"[flaky]\nbase = 'high'\navailability = {availability}\n")
    return path


def _report(run: Path) -> dict[str, Any]:
    """``fedpeft report RUN`` through the CLI's own entry point (in this process)."""
    from typer.testing import CliRunner

    from fedpeft.cli.main import app

    done = CliRunner().invoke(app, ["report", str(run)])
    return {
        "exit": done.exit_code,
        "report_md": (run / "report.md").is_file(),
        "traceback": "Traceback" in done.output
        or done.exception is not None
        and done.exit_code != 0,
    }


def one(work: Path, dropout: float, extra: tuple[str, ...]) -> dict[str, Any]:
    from fedpeft.config import load_config
    from fedpeft.errors import FedpeftError
    from fedpeft.runtime.local import run_local

    tiers = _tiers(work / "tiers.toml", round(1.0 - dropout, 6))
    overrides = [
        *TINY,
        *BASE,
        *extra,
        f"profiles.file={str(tiers)!r}",
        f"profiles.mix={['flaky'] * CLIENTS!r}",
        f"run.output_dir={str(work / 'runs')!r}",
    ]
    row: dict[str, Any] = {"dropout": dropout, "settings": list(extra)}
    try:
        result = run_local(load_config(overrides=overrides))
    except FedpeftError as e:
        return {**row, "completed": False, "stopped": str(e)}
    clients = read_jsonl(result.run_dir / "clients.jsonl")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    offline = sum(c["status"] == "offline" for c in clients)
    row.update(
        completed=True,
        rounds=len(result.rounds),
        dropped=f"{offline}/{len(clients)}",
        dropped_fraction=offline / len(clients) if clients else None,
        rounds_without_quorum=sum(not r.get("quorum", True) for r in result.rounds),
        rounds_without_updates=summary.get("rounds_without_updates"),
        updates_accepted=summary.get("updates_accepted"),
        final_accuracy=summary.get("final_accuracy"),
        report=_report(result.run_dir),
    )
    return row


def study(work: Path, quick: bool = False) -> dict[str, Any]:
    dropouts = (0.3,) if quick else (0.1, 0.3, 1.0)
    quorums = (3,) if quick else (1, 3, 8)
    settings = [(d, (f"server.min_clients={q}",)) for d in dropouts for q in quorums]
    if not quick:
        settings += [(d, ASYNC) for d in dropouts]
    rows = []
    for i, (dropout, extra) in enumerate(settings):
        (work / f"s{i:02d}").mkdir(parents=True)
        row = one(work / f"s{i:02d}", dropout, extra)
        print(
            f"dropout {dropout:.0%} {' '.join(extra)}: {row.get('dropped') or row.get('stopped')}",
            flush=True,
        )
        rows.append(row)
    return {"config": merged(TINY, BASE), "rows": rows}
