"""The run folder: resolved config, per-round logs, checkpoints, summary, exported adapter.

Layout (DESIGN.md): ``config.toml``, ``partitions.json``, ``metrics.jsonl`` (a line a
round), ``clients.jsonl`` (a line a client a round), ``checkpoint/`` (``checkpoint.py``),
``summary.json``, ``adapter/`` (PEFT format). Files that must survive a crash are written
atomically (``files.write_atomic``); log lines after the last checkpoint are dropped when a
run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedpeft.errors import FedpeftError
from fedpeft.files import remove_temporaries, write_atomic, write_json
from fedpeft.server.checkpoint import Checkpoints
from fedpeft.server.state import ServerState
from fedpeft.types import RoundRecord

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CLIENTS = "clients.jsonl"
ALLOCATIONS = "allocations.jsonl"  # heterogeneous runs: every decision, every round
SUMMARY = "summary.json"
PARTITIONS = "partitions.json"
CHECKPOINT = "checkpoint"
ADAPTER = "adapter"
CLIENT_STATES = "clients"  # in-process runs: each client's kept state, clients/<id>/
PERSONAL = "personal.jsonl"  # each client's personal evaluation, every evaluated round
LOGS = (METRICS, CLIENTS, ALLOCATIONS, PERSONAL)

__all__ = ["RunStore", "write_atomic", "write_json"]


def check_rounds_left(done: int, rounds: int) -> None:
    """A resumed run that has completed ``done`` rounds needs ``run.rounds`` ≥ ``done``."""
    if done > rounds:
        raise FedpeftError(
            f"the run has completed {done} rounds but `run.rounds` is {rounds}; "
            f"set it to at least {done} to resume (nothing was changed)."
        )


def _append(path: Path, lines: list[str]) -> None:
    """Appends ``lines`` to a log and syncs them to disk: a round's lines are durable before
    its checkpoint (``write_atomic``, synced) is, so an OS crash or power loss cannot keep
    the checkpoint and lose the lines that ``truncate_logs`` requires of it."""
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


class RunStore:
    """One run's folder; ``fingerprint`` is its resolved config's (``config_fingerprint``)."""

    def __init__(self, root: Path, fingerprint: str | tuple[str, ...] | None = None) -> None:
        self.root = root
        self.checkpoints = Checkpoints(root / CHECKPOINT, fingerprint)

    @classmethod
    def create(
        cls, output_dir: str | Path, name: str, config_toml: str, fingerprint: str = ""
    ) -> RunStore:
        base = Path(output_dir)
        if base.exists() and not base.is_dir():
            raise FedpeftError(
                f"`run.output_dir` {str(base)!r} is a file, not a folder; point it at a folder."
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root, i = base / f"{name}-{stamp}", 1
        while root.exists():
            root, i = base / f"{name}-{stamp}-{i}", i + 1
        try:
            root.mkdir(parents=True)
        except OSError as e:
            raise FedpeftError(f"cannot create the run folder {root}: {e.strerror}.") from None
        store = cls(root, fingerprint)
        write_atomic(root / CONFIG, config_toml.encode())
        return store

    @classmethod
    def open_existing(
        cls, run_dir: str | Path, fingerprint: str | tuple[str, ...] | None = None
    ) -> RunStore:
        root = Path(run_dir)
        if not (root / CONFIG).is_file():
            raise FedpeftError(
                f"run folder {root} is incomplete or not a fedpeft run (no {CONFIG}: a run "
                "killed before writing it had not begun); nothing was resumed, start the run "
                "again without `--resume`."
            )
        remove_temporaries(root)
        return cls(root, fingerprint)

    # ---- per-round logs -------------------------------------------------------------
    def append_round(self, record: RoundRecord) -> None:
        _append(self.root / METRICS, [json.dumps(record.to_json(), sort_keys=True)])
        _append(
            self.root / CLIENTS, [json.dumps(asdict(c), sort_keys=True) for c in record.clients]
        )

    def append_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        _append(self.root / name, [json.dumps(row, sort_keys=True, default=str) for row in rows])

    def read_rounds(self) -> list[dict[str, Any]]:
        path = self.root / METRICS
        if not path.is_file():
            return []
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise self._corrupt(f"{METRICS} is not valid JSON lines") from None

    def truncate_logs(self, last_round: int) -> None:
        """Drops log lines after ``last_round`` (written after the last checkpoint); what is
        kept of ``metrics.jsonl`` must be one line for each round 1 … ``last_round``, since a
        round is logged before it is checkpointed."""
        for name in LOGS:
            path = self.root / name
            if not path.is_file():
                if name == METRICS and last_round > 0:
                    raise self._corrupt(f"{METRICS} is missing")
                continue
            try:
                lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            except UnicodeDecodeError:
                raise self._corrupt(f"{name} is not valid JSON lines") from None
            if lines and not _parses(lines[-1]):
                lines.pop()  # half-written by a crash after the last checkpoint
            try:
                numbered = [(json.loads(ln)["round"], ln) for ln in lines]
                keep = [(r, ln) for r, ln in numbered if r <= last_round]
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
                raise self._corrupt(f"{name} is not valid JSON lines") from None
            if name == METRICS:
                self._check_rounds([r for r, _ in keep], last_round)
            write_atomic(path, "".join(ln + "\n" for _, ln in keep).encode())

    def _check_rounds(self, rounds: list[Any], last_round: int) -> None:
        """``metrics.jsonl``'s rounds up to the checkpoint must be 1 … ``last_round``, once
        each (a round is logged before it is checkpointed)."""
        if rounds != list(range(1, last_round + 1)):
            shown = ", ".join(map(str, rounds[:8])) + (" …" if len(rounds) > 8 else "")
            raise self._corrupt(
                f"{METRICS} records rounds [{shown}] but the checkpoint is of round "
                f"{last_round} (restore the log from a copy, or start the run again without "
                "--resume)"
            )

    # ---- checkpoints ----------------------------------------------------------------
    def save_checkpoint(self, state: ServerState) -> None:
        self.checkpoints.save(state)

    def load_checkpoint(self) -> ServerState:
        """The last committed round's state that verifies (``checkpoint.py``); a store opened
        without a fingerprint reads any configuration's (inspection, not resuming)."""
        return self.checkpoints.load()

    def _corrupt(self, what: str) -> FedpeftError:
        return FedpeftError(
            f"run folder {self.root} is incomplete or corrupted: {what}; nothing was resumed."
        )

    # ---- outputs --------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.root / name, obj)

    def adapter_tmp(self) -> Path:
        tmp = self.root / f".{ADAPTER}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        return tmp

    def commit_adapter(self, tmp: Path) -> Path:
        """Swaps a fully written adapter folder into place."""
        final, old = self.root / ADAPTER, self.root / f".{ADAPTER}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final
