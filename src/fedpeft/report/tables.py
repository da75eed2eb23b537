"""Reading an experiment's tables back, and the statistics the report shows: per run its
final round and its per-round means, then per (variant, cell) the mean ± sample standard
deviation over seeds."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpeft.errors import FedpeftError

STAR = "*"  # an axis that does not apply to a run (the centralised reference's split)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows with numbers parsed (empty cells are None)."""
    if not path.is_file():
        raise FedpeftError(f"{path} is missing; run `fedpeft report` on the experiment folder.")
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_plan(root: Path) -> dict[str, Any]:
    path = root / "experiment.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise FedpeftError(
            f"{path} is missing or damaged; is {root} an experiment folder?"
        ) from None
    if not isinstance(plan, dict) or "variants" not in plan:
        raise FedpeftError(f"{path} does not describe an experiment.")
    return plan


@dataclass(frozen=True)
class Stat:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else (0.0 if self.n == 1 else None)

    def text(self, spec: str = ".3f", scale: float = 1.0) -> str:
        if self.mean is None:
            return "—"
        m, s = self.mean / scale, (self.std or 0.0) / scale
        return f"{m:{spec}} ± {s:{spec}}" if self.n > 1 else f"{m:{spec}} (1 seed)"


@dataclass
class RunFigures:
    """One run's figures: the final round's and means over its rounds."""

    run: str
    variant: str
    seed: int
    labels: dict[str, str]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        """``key``'s numbers over the rounds that recorded one, in round order."""
        return [float(r[key]) for r in self.rounds if _has(r, key)]

    def final(self, key: str) -> float | None:
        values = self.values(key)
        return values[-1] if values else None

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def peak(self, key: str) -> float | None:
        values = self.values(key)
        return max(values) if values else None


def client_clock(runs: Sequence[RunFigures]) -> str:
    """The per-round client training time to compare ``runs`` by: CPU seconds when every
    run records them, else wall seconds (on a shared machine wall time grows with whatever
    else runs there, CPU time does not; older runs recorded wall time only)."""
    # every round that timed its clients, in every run (a run resumed by newer code has
    # rounds of both kinds)
    timed = [x for r in runs for x in r.rounds if _has(x, "client_train_time_mean_s")]
    cpu = (
        bool(runs)
        and all(r.values("client_train_cpu_mean_s") for r in runs)
        and all(_has(x, "client_train_cpu_mean_s") for x in timed)
    )
    return "client_train_cpu_mean_s" if cpu else "client_train_time_mean_s"


def _has(row: dict[str, Any], key: str) -> bool:
    return isinstance(row.get(key), int | float)


def run_figures(
    rows: Iterable[dict[str, Any]], axes: Sequence[str], done: set[str]
) -> list[RunFigures]:
    """Finished runs only, their rounds in order."""
    out: dict[str, RunFigures] = {}
    for row in rows:
        if row["run"] not in done:
            continue
        fig = out.get(row["run"])
        if fig is None:
            labels = {a: str(row.get(a)) for a in axes}
            fig = out[row["run"]] = RunFigures(row["run"], row["variant"], int(row["seed"]), labels)
        fig.rounds.append(row)
    for fig in out.values():
        fig.rounds.sort(key=lambda r: r["round"])
    return list(out.values())


def cells(figures: Iterable[RunFigures], axes: Sequence[str]) -> list[dict[str, str]]:
    """Every combination of labels some run has (without ``*``), in first-seen order."""
    seen: dict[tuple[str, ...], dict[str, str]] = {}
    for f in figures:
        if STAR in f.labels.values():
            continue
        seen.setdefault(tuple(f.labels[a] for a in axes), dict(f.labels))
    return list(seen.values())


def in_cell(fig: RunFigures, cell: dict[str, str]) -> bool:
    return all(fig.labels.get(a) in (STAR, v) for a, v in cell.items())


def stat(figures: Iterable[RunFigures], value: Any) -> Stat:
    """``value(run)`` over runs (one per seed), missing values dropped."""
    vals = [v for f in figures if (v := value(f)) is not None and math.isfinite(v)]
    return Stat(tuple(vals))
