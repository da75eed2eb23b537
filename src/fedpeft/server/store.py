"""The run folder: resolved config, per-round logs, checkpoints, summary, exported adapter.

Layout (DESIGN.md): ``config.toml``, ``partitions.json``, ``metrics.jsonl`` (a line a
round), ``clients.jsonl`` (a line a client a round), ``checkpoint/``, ``summary.json``,
``adapter/`` (PEFT format). Files that must survive a crash are written atomically
(temporary file, fsync, rename); the checkpoint's ``state.json`` is written last and is
what marks a round as complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedpeft.compression import CodecError, decode, encode
from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState, RoundRecord

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CLIENTS = "clients.jsonl"
ALLOCATIONS = "allocations.jsonl"  # heterogeneous runs: every decision, every round
SUMMARY = "summary.json"
PARTITIONS = "partitions.json"
CHECKPOINT = "checkpoint"
ADAPTER = "adapter"


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` so that ``path`` holds either the old or the new content, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _file_name(meta: Any, key: str) -> str:
    """A checkpoint file named in ``state.json``; only a plain file name is accepted."""
    name = meta[key]
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise KeyError(key)
    return name


GROUP_SEP = "::"


def _flatten(groups: dict[str, AdapterState]) -> AdapterState:
    return {f"{g}{GROUP_SEP}{k}": v for g, state in groups.items() for k, v in state.items()}


def _unflatten(flat: AdapterState) -> dict[str, AdapterState]:
    out: dict[str, AdapterState] = {}
    for key, value in flat.items():
        group, sep, name = key.partition(GROUP_SEP)
        if not sep or not group or not name:
            raise ValueError(f"checkpoint tensor {key!r} names no group")
        out.setdefault(group, {})[name] = value
    return out


class RunStore:
    """One run's folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def create(cls, output_dir: str | Path, name: str, config_toml: str) -> RunStore:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / f"{name}-{stamp}"
        root, i = base, 1
        while root.exists():
            root, i = Path(f"{base}-{i}"), i + 1
        root.mkdir(parents=True)
        store = cls(root)
        write_atomic(root / CONFIG, config_toml.encode())
        return store

    @classmethod
    def open_existing(cls, run_dir: str | Path) -> RunStore:
        root = Path(run_dir)
        if not (root / CONFIG).is_file():
            raise FedpeftError(
                f"run folder {root} is incomplete or not a fedpeft run (no {CONFIG}); "
                "nothing was resumed."
            )
        return cls(root)

    # ---- per-round logs -------------------------------------------------------------
    def append_round(self, record: RoundRecord) -> None:
        with (self.root / METRICS).open("a") as f:
            f.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
        with (self.root / CLIENTS).open("a") as f:
            for c in record.clients:
                f.write(json.dumps(asdict(c), sort_keys=True) + "\n")

    def append_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        with (self.root / name).open("a") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True, default=str) + "\n")

    def read_rounds(self) -> list[dict[str, Any]]:
        path = self.root / METRICS
        if not path.is_file():
            return []
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise self._corrupt(f"{METRICS} is not valid JSON lines") from None

    def truncate_logs(self, last_round: int) -> None:
        """Drops log lines after ``last_round`` (written after the last checkpoint)."""
        for name in (METRICS, CLIENTS, ALLOCATIONS):
            path = self.root / name
            if not path.is_file():
                continue
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if lines and not _parses(lines[-1]):
                lines.pop()  # half-written by a crash after the last checkpoint
            try:
                keep = [ln for ln in lines if json.loads(ln)["round"] <= last_round]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise self._corrupt(f"{name} is not valid JSON lines") from None
            write_atomic(path, "".join(ln + "\n" for ln in keep).encode())

    # ---- checkpoints ----------------------------------------------------------------
    def save_checkpoint(
        self,
        rnd: int,
        adapters: dict[str, AdapterState],
        optimizer: dict[str, AdapterState] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Round-numbered files first, then ``state.json`` pointing at them (the commit), then
        the previous round's files go: a crash at any point leaves one complete checkpoint.

        Each group's tensors are stored under ``<group>::<key>`` in one file; ``extra`` is
        JSON (the allocation's gain estimator, the simulated clock, …)."""
        folder = self.root / CHECKPOINT
        names = {
            "global": f"global-{rnd:06d}.safetensors",
            "server_opt": f"server_opt-{rnd:06d}.safetensors",
        }
        write_atomic(folder / names["global"], encode(_flatten(adapters), {"round": rnd}))
        write_atomic(
            folder / names["server_opt"], encode(_flatten(optimizer or {}), {"round": rnd})
        )
        meta = {"round": rnd, "saved_at": time.time(), "extra": extra or {}, **names}
        write_json(folder / "state.json", meta)
        for old in folder.glob("*.safetensors"):
            if old.name not in names.values():
                old.unlink(missing_ok=True)

    def load_checkpoint(
        self,
    ) -> tuple[int, dict[str, AdapterState], dict[str, AdapterState], dict[str, Any]]:
        """(round, group adapters, server-optimiser states, extra) of the last complete round."""
        folder = self.root / CHECKPOINT
        try:
            meta = json.loads((folder / "state.json").read_text())
            rnd = meta["round"]
            state, tmeta = decode((folder / _file_name(meta, "global")).read_bytes())
            optimizer, ometa = decode((folder / _file_name(meta, "server_opt")).read_bytes())
        except FileNotFoundError as e:
            raise self._corrupt(f"{Path(e.filename).name} is missing") from None
        except (json.JSONDecodeError, KeyError, TypeError, CodecError) as e:
            raise self._corrupt(f"its checkpoint is unreadable ({e})") from None
        if not isinstance(rnd, int) or tmeta.get("round") != rnd or ometa.get("round") != rnd:
            raise self._corrupt("the checkpoint's files disagree on the round")
        extra = meta.get("extra", {})
        if not isinstance(extra, dict):
            raise self._corrupt("its state.json's `extra` is not an object")
        try:
            return rnd, _unflatten(state), _unflatten(optimizer), extra
        except ValueError as e:
            raise self._corrupt(str(e)) from None

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
