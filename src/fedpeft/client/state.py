"""What a client keeps between its rounds (SCAFFOLD's control ``c_i``, an error-feedback
residual, personal modules): a flat ``ClientState``, saved per client on the client's side.

Files are ``<folder>/<client>/state-<round>.safetensors`` (the safetensors codec: no code
runs when they are read), written atomically after the round that produced them; the two
newest are kept. ``load(client, before_round)`` takes the newest state saved at a round
before ``before_round``, so a run resumed from an earlier checkpoint sees exactly what the
uninterrupted run saw at that round — whatever a crashed later round wrote is ignored. Memory
stays flat however many clients there are: nothing is held in memory but the folder name.
Without a folder states live in a dict: a client that keeps nothing, tests, and a Flower
node, whose kept states live in its ClientApp's ``Context`` state and are lent to the store
for one message (``held`` / ``replace``; ``pack`` / ``unpack`` flatten them for the trip).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from fedpeft.compression import CodecError, decode, encode
from fedpeft.files import PRIVATE_MODE, write_atomic
from fedpeft.types import AdapterState

log = logging.getLogger("fedpeft.client")

ClientState = AdapterState
"""A client's private tensors, keyed ``<part>/<name>`` (e.g. ``scaffold/c_i/<key>``)."""

KEEP = 2
_FILE = re.compile(r"^state-(\d{6})\.safetensors$")


class ClientStateStore:
    """Per-client states, each tagged with the round that wrote it. With ``per_run`` (a
    machine that serves several runs, e.g. a Flower node) each run keeps its own under
    ``<folder>/<run>/``; else the folder belongs to one run (the in-process run folder)."""

    def __init__(
        self, folder: Path | None = None, per_run: bool = False, exports: Path | None = None
    ) -> None:
        """``exports``: where a client's other files go (``client_folder``) when its states
        are kept in memory (default: beside them in ``folder``)."""
        self.folder = folder
        self.per_run = per_run
        self.exports = exports
        self._memory: dict[tuple[str, int], list[tuple[int, ClientState]]] = {}

    def load(self, client_id: int, before_round: int, run: str = "") -> ClientState:
        """The newest state ``client_id`` saved at a round before ``before_round`` ({} if
        none). A file that does not decode is skipped with a warning (the older one is
        used)."""
        key = self._key(client_id, run)
        if self.folder is None:
            saved = [(r, s) for r, s in self._memory.get(key, []) if r < before_round]
            return dict(max(saved, key=lambda x: x[0])[1]) if saved else {}
        for rnd in self._rounds(key):
            if rnd >= before_round:
                continue
            try:
                state, meta = decode(self._path(key, rnd).read_bytes())
            except (OSError, CodecError) as e:
                log.warning("client %d: its round-%d state is unreadable (%s)", client_id, rnd, e)
                continue
            if meta.get("round") == rnd and meta.get("client_id") == client_id:
                return state
            log.warning("client %d: its state of round %d names another round", client_id, rnd)
        return {}

    def save(self, client_id: int, rnd: int, state: ClientState, run: str = "") -> None:
        """Keeps ``state`` as written in round ``rnd`` (an empty state is not written)."""
        if not state:
            return
        key = self._key(client_id, run)
        if self.folder is None:
            kept = [(r, s) for r, s in self._memory.get(key, []) if r != rnd]
            self._memory[key] = sorted([*kept, (rnd, dict(state))], key=lambda x: x[0])[-KEEP:]
            return
        tensors = {k: v.detach().cpu() for k, v in state.items()}
        meta: dict[str, object] = {"round": rnd, "client_id": client_id}
        write_atomic(self._path(key, rnd), encode(tensors, meta), PRIVATE_MODE)
        for old in self._rounds(key)[KEEP:]:
            self._path(key, old).unlink(missing_ok=True)

    def held(self, client_id: int, run: str = "") -> dict[int, ClientState]:
        """Every state the in-memory store keeps of ``client_id``, by round."""
        if self.folder is not None:
            raise ValueError("only an in-memory client state store lends its states")
        return {r: dict(s) for r, s in self._memory.get(self._key(client_id, run), [])}

    def replace(self, client_id: int, states: Mapping[int, ClientState], run: str = "") -> None:
        """Makes ``states`` (by round) all that the in-memory store keeps of ``client_id``;
        {} forgets it. A Flower node lends its Context's states for one message this way."""
        if self.folder is not None:
            raise ValueError("only an in-memory client state store lends its states")
        key = self._key(client_id, run)
        kept = sorted((r, dict(s)) for r, s in states.items() if s)[-KEEP:]
        if kept:
            self._memory[key] = kept
        else:
            self._memory.pop(key, None)

    def client_folder(self, client_id: int, run: str = "") -> Path | None:
        """Where what else the client keeps on disk for this run goes (its exported personal
        adapter): beside its states, or under ``exports`` (None: nowhere)."""
        root = self.folder if self.folder is not None else self.exports
        return self._dir(self._key(client_id, run), root) if root is not None else None

    def _key(self, client_id: int, run: str) -> tuple[str, int]:
        if self.per_run and (not run or Path(run).name != run or run.startswith(".")):
            raise ValueError(f"a per-run client state store needs a plain run name, got {run!r}")
        return (run if self.per_run else "", client_id)

    def _rounds(self, key: tuple[str, int]) -> list[int]:
        """Rounds with a saved state, newest first."""
        folder = self._dir(key)
        if not folder.is_dir():
            return []
        found = (_FILE.match(p.name) for p in folder.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def _dir(self, key: tuple[str, int], root: Path | None = None) -> Path:
        root = root if root is not None else self.folder
        assert root is not None
        run, client_id = key
        return (root / run if run else root) / str(client_id)

    def _path(self, key: tuple[str, int], rnd: int) -> Path:
        return self._dir(key) / f"state-{rnd:06d}.safetensors"


def pack(states: Mapping[int, ClientState]) -> ClientState:
    """States by round as one flat state, each key prefixed by its round
    (``000003/personal/…``), for a trip through one tensor record or payload."""
    return {f"{rnd:06d}/{k}": v for rnd, state in states.items() for k, v in state.items()}


def unpack(flat: ClientState) -> dict[int, ClientState]:
    """The inverse of ``pack``; a key without its round prefix raises ``ValueError``."""
    out: dict[int, ClientState] = {}
    for key, value in flat.items():
        rnd, sep, rest = key.partition("/")
        if not (sep and rest and len(rnd) == 6 and rnd.isdigit()):
            raise ValueError(f"kept-state key {key!r} does not start with its round")
        out.setdefault(int(rnd), {})[rest] = value
    return out
