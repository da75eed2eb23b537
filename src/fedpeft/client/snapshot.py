"""A client's kept states as one verified file on its own disk, so that a run resumed in a
fresh process (a new Flower run, a restarted node) continues them.

A Flower node keeps its client's states (``state.ClientStateStore``'s rounds: personal
modules, SCAFFOLD's ``c_i``, error-feedback residuals) in its ClientApp's ``Context``, which
a new Flower run starts empty. After every message that changes them the node also writes
them to ``<folder>/`` (``$FEDPEFT_CLIENT_DIR/<config>/<run>/<client>/``):

* ``kept-<sha256[:16]>.safetensors`` — the states, ``state.pack``-ed (the safetensors codec:
  no code runs when it is read), written atomically;
* ``kept.json`` — a ``SnapshotManifest`` (format version, run, client, the newest round, every
  round held, the data file's name and sha256), written atomically after the data file, so
  a crash between the two leaves the previous manifest and its file intact.

``load_snapshot`` trusts nothing it reads: a manifest that does not parse, names another
run or client, or a file whose hash or metadata disagree with it, is ignored with a logged
warning (the client starts afresh). States from a round at or after ``before_round`` are
dropped with a logged reason — the server resumed from an earlier checkpoint, so what a
client did after it never happened.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedpeft.client.state import ClientState, pack, unpack
from fedpeft.compression import CodecError, decode, encode
from fedpeft.files import PRIVATE_MODE, write_atomic

log = logging.getLogger("fedpeft.client")

MANIFEST = "kept.json"
FORMAT = "fedpeft.kept"
VERSION = 1
_DATA_PREFIX, _DATA_SUFFIX = "kept-", ".safetensors"


@dataclass(frozen=True)
class SnapshotManifest:
    """What ``kept.json`` says of the data file beside it."""

    run_id: str
    client_id: int
    round: int  # the newest round held: the round this snapshot is from
    rounds: tuple[int, ...]  # every round held, oldest first
    file: str
    sha256: str
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "run_id": self.run_id,
            "client_id": self.client_id,
            "round": self.round,
            "rounds": list(self.rounds),
            "file": self.file,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, raw: object) -> SnapshotManifest:
        """The manifest in ``raw``; ``ValueError`` naming the first field that is wrong."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} manifest")
        if raw.get("version") != VERSION:
            raise ValueError(f"manifest version {raw.get('version')!r}, expected {VERSION}")
        rounds = raw.get("rounds")
        ints = [raw.get("client_id"), raw.get("round"), *(rounds or [])]
        if not isinstance(rounds, list) or not rounds or not all(_is_int(x) for x in ints):
            raise ValueError("`client_id`, `round` and `rounds` must be integers")
        texts = [raw.get("run_id"), raw.get("file"), raw.get("sha256")]
        if not all(isinstance(x, str) and x for x in texts):
            raise ValueError("`run_id`, `file` and `sha256` must be non-empty strings")
        file = str(raw["file"])
        if Path(file).name != file or not file.startswith(_DATA_PREFIX):
            raise ValueError(f"`file` {file!r} is not a kept-state file name")
        if raw["round"] != max(rounds):
            raise ValueError("`round` is not the newest of `rounds`")
        return cls(
            str(raw["run_id"]), raw["client_id"], raw["round"], tuple(sorted(rounds)), file,
            str(raw["sha256"]),
        )  # fmt: skip


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def save_snapshot(
    folder: Path, run_id: str, client_id: int, states: Mapping[int, ClientState]
) -> None:
    """Writes ``states`` (by round) as the client's snapshot in ``folder``; {} removes it."""
    kept = {r: s for r, s in states.items() if s}
    if not kept:
        forget_snapshot(folder)
        return
    newest = max(kept)
    meta: dict[str, object] = {"run_id": run_id, "client_id": client_id, "round": newest}
    data = encode(pack(kept), meta)
    digest = hashlib.sha256(data).hexdigest()
    name = f"{_DATA_PREFIX}{digest[:16]}{_DATA_SUFFIX}"
    write_atomic(folder / name, data, PRIVATE_MODE)
    manifest = SnapshotManifest(run_id, client_id, newest, tuple(sorted(kept)), name, digest)
    write_atomic(
        folder / MANIFEST,
        json.dumps(manifest.to_json(), sort_keys=True).encode(),
        PRIVATE_MODE,
    )
    _prune(folder, keep=name)


def forget_snapshot(folder: Path) -> None:
    """Removes the client's snapshot in ``folder``, as far as the disk lets it (its manifest
    first: without it nothing is read back)."""
    try:
        (folder / MANIFEST).unlink(missing_ok=True)
        _prune(folder, keep="")
    except OSError as e:
        log.warning("the kept state in %s could not be removed (%s)", folder, e)


def _prune(folder: Path, keep: str) -> None:
    """Deletes every data file but ``keep`` (those of earlier snapshots)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        name = path.name
        if name.startswith(_DATA_PREFIX) and name.endswith(_DATA_SUFFIX) and name != keep:
            path.unlink(missing_ok=True)


def load_snapshot(
    folder: Path, run_id: str, client_id: int, before_round: int
) -> dict[int, ClientState]:
    """The client's verified states by round, those of rounds before ``before_round`` only
    ({} when there is none, or it does not verify: the reason is logged)."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    where = f"client {client_id}: its kept state in {folder}"
    try:
        manifest = SnapshotManifest.from_json(json.loads(path.read_bytes()))
        if manifest.run_id != run_id or manifest.client_id != client_id:
            raise ValueError(
                f"it belongs to run {manifest.run_id!r}, client {manifest.client_id}, "
                f"not run {run_id!r}, client {client_id}"
            )
        states = _read(folder / manifest.file, manifest)
    except (OSError, ValueError, RecursionError) as e:  # CodecError, JSONDecodeError: ValueErrors
        log.warning("%s is ignored, the client starts it afresh: %s", where, e)
        return {}
    late = sorted(r for r in states if r >= before_round)
    if late:
        log.warning(
            "%s: round(s) %s dropped, as the server is at round %d (it resumed from an "
            "earlier checkpoint)",
            where,
            ", ".join(map(str, late)),
            before_round,
        )
    return {r: s for r, s in states.items() if r < before_round}


def _read(path: Path, manifest: SnapshotManifest) -> dict[int, ClientState]:
    """The states in ``path`` once its hash, metadata and rounds match ``manifest``."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise ValueError(f"{path.name}'s sha256 does not match the manifest (damaged or altered)")
    try:
        flat, meta = decode(data)
    except CodecError as e:
        raise ValueError(f"{path.name} does not decode ({e})") from None
    expected = {"run_id": manifest.run_id, "client_id": manifest.client_id, "round": manifest.round}
    if meta != expected:
        raise ValueError(f"{path.name}'s metadata {meta} disagrees with the manifest")
    states = unpack(flat)
    if tuple(sorted(states)) != manifest.rounds:
        raise ValueError(f"{path.name} holds rounds {sorted(states)}, not {list(manifest.rounds)}")
    return states


def same_states(a: Mapping[int, ClientState], b: Mapping[int, ClientState]) -> bool:
    """Whether two sets of states by round hold the same tensors, bit for bit."""
    if a.keys() != b.keys() or any(a[r].keys() != b[r].keys() for r in a):
        return False
    return all(
        a[r][k].dtype == b[r][k].dtype and torch.equal(a[r][k], b[r][k]) for r in a for k in a[r]
    )


def copy_states(states: Mapping[int, ClientState]) -> dict[int, ClientState]:
    """A copy of ``states`` that shares no tensor with it."""
    return {r: {k: v.clone() for k, v in s.items()} for r, s in states.items()}
