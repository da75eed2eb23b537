"""An experiment's folder, and where each of its runs stands.

``<experiment>/``: ``experiment.toml`` (the file as given), ``experiment.json`` (the plan:
every run with its keys and labels, the variants and their roles), ``configs/<key>.toml``
(each run's fedpeft config), ``runs/<key>/run-<time>/`` (each run's usual folder) and
``runs/<key>/log.txt`` (its output), ``results.csv`` / ``clients.csv`` / ``runs.csv`` /
``personal.csv`` (the tables), ``report.md``, ``report.html`` and ``plots/``.

A run is **done** when its ``summary.json`` covers its planned rounds, **partial** when it
has a checkpoint (it is resumed from there, also to run more rounds), and **new** otherwise
(a folder a run left before its first checkpoint is removed when it starts afresh).

A run's process holds an exclusive ``flock`` on its ``log.txt`` (its output, inherited from
the runner) for as long as it lives: a run whose runner was killed goes on, and a second
invocation must not start it again into the same folder.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from fedpeft.files import write_atomic, write_json

PLAN = "experiment.json"
SOURCE = "experiment.toml"
RUNS = "runs"
CONFIGS = "configs"
STAMPED = re.compile(r"run-(\d{8}-\d{6})(?:-(\d+))?")  # run.name "run" + its stamp
RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json")  # server.store's: a run's folder


class RunState(StrEnum):
    DONE = "done"
    PARTIAL = "partial"
    NEW = "new"


@dataclass(frozen=True)
class ExperimentDir:
    root: Path

    def run_home(self, key: str) -> Path:
        return self.root / RUNS / key

    def config_path(self, key: str) -> Path:
        return self.root / CONFIGS / f"{key}.toml"

    def log_path(self, key: str) -> Path:
        return self.run_home(key) / "log.txt"

    def run_folder(self, key: str) -> Path | None:
        """The run's fedpeft folder (the newest, should there be several): one holding a
        file a run writes (``RunStore.create`` writes ``config.toml`` first; a study's
        records keep its logs), so a folder put beside it (``run-old``) is neither read as
        the run nor cleared as a stale one. One named as ``RunStore.create`` names it goes
        before any other (a copy ``run-….bak`` beside it holds its files too)."""
        home = self.run_home(key)
        folders = [p for p in home.glob("run-*") if any((p / f).is_file() for f in RUN_FILES)]
        return max(folders, key=_newest, default=None)

    def state(self, key: str, rounds: int) -> RunState:
        folder = self.run_folder(key)
        if folder is None:
            return RunState.NEW
        summary = read_json(folder / "summary.json")
        if summary is not None and _int(summary.get("rounds_completed")) >= rounds:
            return RunState.DONE
        if any((folder / "checkpoint").glob("round-*.manifest.json")):
            return RunState.PARTIAL
        return RunState.NEW  # killed before its first checkpoint: nothing to resume

    def clear_stale(self, key: str) -> None:
        """Removes a run folder that has no checkpoint (before the run starts afresh)."""
        folder = self.run_folder(key)
        if folder is not None and self.state(key, 1 << 30) is RunState.NEW:
            shutil.rmtree(folder)

    def busy(self, key: str) -> bool:
        """Whether a run process still holds the run's log (one an earlier invocation
        started, still going although its runner was stopped by SIGKILL)."""
        path = self.log_path(key)
        if not path.is_file():
            return False
        with path.open("rb") as f:
            return not lock_log(f)  # a lock taken here is let go when f closes

    def rounds_logged(self, key: str) -> int:
        """Rounds in the run's ``metrics.jsonl`` so far (for progress)."""
        folder = self.run_folder(key)
        path = folder / "metrics.jsonl" if folder else None
        if path is None or not path.is_file():
            return 0
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())

    def write_plan(self, plan: dict[str, Any], source: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / SOURCE, source)
        write_json(self.root / PLAN, plan)

    def read_plan(self) -> dict[str, Any] | None:
        return read_json(self.root / PLAN)


def _newest(folder: Path) -> tuple[bool, str, int]:
    """Orders a run's folders: RunStore's by stamp and number (``-10`` after ``-9``), after
    any other (a study's ``run-recovered``, read when it is the only one), those by name."""
    stamp = STAMPED.fullmatch(folder.name)
    if stamp is None:
        return (False, folder.name, 0)
    return (True, stamp[1], int(stamp[2] or 1))


def lock_log(log: IO[bytes]) -> bool:
    """Takes the run's lock on its open log (held while any process has it open: the run
    inherits it as its output); False when another process holds it. (No lock where
    there is no ``fcntl``: the runner stops its runs by process group, POSIX too; nor
    where the folder's file system has no locks — ENOLCK, EOPNOTSUPP, or EBADF for the
    read-only look ``busy`` takes on NFS — as before there was one.)"""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(log.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or damaged (nested deeper
    than ``json`` parses, too)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
