"""Checkpoints: the server state after a round, written so that nothing damaged resumes.

``checkpoint/`` holds, per saved round ``R`` (zero-padded to six digits):

* ``round-R.safetensors`` — every tensor: ``adapters::<group>::<key>``,
  ``optimizer::<group>::<key>``, SCAFFOLD's server controls ``controls::<group>::<key>`` and,
  for an asynchronous run, the in-flight clients' ``inflight::<name>::<key>`` (decoded
  without running code);
* ``round-R.json`` — ``ServerState.to_json()`` (format version, groups, allocation and
  cluster state, the asynchronous clock);
* ``round-R.manifest.json`` — written LAST, it commits the round: the format version, the
  round, the sha256 of the two files above and the fingerprint of the run's resolved
  config (``config.fingerprint``).

Round 0 (the initial state) is written when a run starts, so a run killed in its first
round resumes. The two newest committed rounds are kept. Loading takes the newest round
whose manifest and files verify; a damaged newest round falls back to the one before it
(with a warning), and a checkpoint of another format version or another configuration
(its fingerprint differs: other seed, learning rate, …) is refused outright. ``load_round``
reads one given round or refuses (a finished run's final state, never an older one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from fedpeft.compression import CodecError, decode, encode
from fedpeft.errors import FedpeftError
from fedpeft.files import remove_temporaries, write_atomic, write_json
from fedpeft.server.state import READABLE_FORMATS, STATE_FORMAT, ServerState
from fedpeft.types import AdapterState

log = logging.getLogger("fedpeft.server")

KEEP = 2  # committed rounds kept on disk
SEP = "::"
_MANIFEST = re.compile(r"^round-(\d{6})\.manifest\.json$")
RESUMING = ("cannot be resumed", "nothing was resumed")  # what a refusal says (resume)


def _names(rnd: int) -> tuple[str, str, str]:
    stem = f"round-{rnd:06d}"
    return f"{stem}.safetensors", f"{stem}.json", f"{stem}.manifest.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PARTS = ("adapters", "optimizer", "inflight", "controls")


def _flatten(state: ServerState) -> AdapterState:
    out: AdapterState = {}
    parts = {
        "adapters": state.adapters,
        "optimizer": state.optimizer,
        "inflight": state.inflight,
        "controls": state.controls,
    }
    for part, groups in parts.items():
        for group, tensors in groups.items():
            out.update({f"{part}{SEP}{group}{SEP}{k}": v for k, v in tensors.items()})
    return out


def _unflatten(flat: AdapterState) -> dict[str, dict[str, AdapterState]]:
    parts: dict[str, dict[str, AdapterState]] = {part: {} for part in PARTS}
    for key, value in flat.items():
        part, _, rest = key.partition(SEP)
        group, sep, name = rest.partition(SEP)
        if part not in parts or not sep or not group or not name:
            raise ValueError(f"checkpoint tensor {key!r} names no part and group")
        parts[part].setdefault(group, {})[name] = value
    return parts


class Checkpoints:
    """The ``checkpoint/`` folder of one run, for a configuration with ``fingerprint``
    (None: read whatever configuration wrote it — for inspecting a run, never to resume);
    ``refusal``: what a refusal says could not be done and what was therefore not done."""

    def __init__(
        self,
        folder: Path,
        fingerprint: str | tuple[str, ...] | None,
        refusal: tuple[str, str] = RESUMING,
    ) -> None:
        self.folder = folder
        # several: the first is written, any is accepted (``accepted_fingerprints``)
        accepted = (fingerprint,) if isinstance(fingerprint, str) else fingerprint
        self.accepted = accepted
        self.fingerprint = accepted[0] if accepted else None
        self.refusal = refusal

    def save(self, state: ServerState) -> None:
        """Tensors and state first, the manifest (the commit) last, then old rounds go: a
        crash at any point leaves the previous committed round intact."""
        tensors_name, json_name, manifest_name = _names(state.round)
        tensors = encode(_flatten(state), {"round": state.round})
        meta = (json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n").encode()
        write_atomic(self.folder / tensors_name, tensors)
        write_atomic(self.folder / json_name, meta)
        if self.fingerprint is None:
            raise ValueError("a checkpoint is written for a configuration: give its fingerprint")
        manifest = {
            "format": STATE_FORMAT,
            "round": state.round,
            "config_fingerprint": self.fingerprint,
            "files": {tensors_name: _sha256(tensors), json_name: _sha256(meta)},
        }
        write_json(self.folder / manifest_name, manifest)
        self._prune(state.round)

    def rounds(self) -> list[int]:
        """Rounds with a manifest, newest first."""
        if not self.folder.is_dir():
            return []
        found = (_MANIFEST.match(p.name) for p in self.folder.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def load(self) -> ServerState:
        """The newest round that verifies (see the module docstring)."""
        remove_temporaries(self.folder)
        rounds = self.rounds()
        if not rounds:
            if (self.folder / "state.json").is_file():
                raise self._refuse(
                    "its checkpoint has format 1 (fedpeft before the typed server state) but "
                    f"this fedpeft reads formats {READABLE_FORMATS[0]}–{STATE_FORMAT}"
                )
            raise self._refuse("it has no committed checkpoint")
        reasons = []
        for rnd in rounds:  # all, not KEEP: stray newer manifests must not hide a valid round
            try:
                state = self._load_round(rnd)
            except _Damaged as e:
                reasons.append(f"round {rnd}: {e}")
                log.warning("checkpoint of round %d is damaged (%s)", rnd, e)
                continue
            if reasons:
                log.warning("resuming from the previous valid checkpoint, round %d", rnd)
            return state
        raise self._refuse(f"no checkpoint verifies ({'; '.join(reasons)})")

    def load_round(self, rnd: int) -> ServerState:
        """Round ``rnd``'s state, refused unless its manifest and files verify (no other
        round in its place). Reads only: leftover temporaries stay."""
        if rnd not in self.rounds():
            raise self._refuse(f"it has no committed checkpoint of its last round, {rnd}")
        try:
            return self._load_round(rnd)
        except _Damaged as e:
            raise self._refuse(
                f"the checkpoint of its last round, {rnd}, is damaged ({e})"
            ) from None

    def _load_round(self, rnd: int) -> ServerState:
        tensors_name, json_name, manifest_name = _names(rnd)
        try:
            manifest = json.loads((self.folder / manifest_name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise _Damaged("its manifest is unreadable") from None
        if not isinstance(manifest, dict):
            raise _Damaged("its manifest is not an object")
        if manifest.get("format") not in READABLE_FORMATS:
            raise self._refuse(
                f"its checkpoint has format {manifest.get('format')!r} but this fedpeft "
                f"reads formats {READABLE_FORMATS[0]}–{STATE_FORMAT}"
            )
        wanted = self.accepted
        if wanted is not None and manifest.get("config_fingerprint") not in wanted:
            raise self._refuse(
                "its checkpoint was written for another configuration (the config "
                "fingerprint differs: another seed, learning rate, model or data)"
            )
        files = manifest.get("files")
        if manifest.get("round") != rnd or not isinstance(files, dict):
            raise _Damaged("its manifest does not describe this round")
        blobs = {}
        for name in (tensors_name, json_name):
            try:
                blobs[name] = (self.folder / name).read_bytes()
            except OSError:
                raise _Damaged(f"{name} is missing") from None
            if files.get(name) != _sha256(blobs[name]):
                raise _Damaged(f"{name} does not match its sha256")
        try:
            flat, meta = decode(blobs[tensors_name])
            parts = _unflatten(flat)
            raw = json.loads(blobs[json_name])
            state = ServerState.from_json(
                raw, parts["adapters"], parts["optimizer"], parts["inflight"], parts["controls"]
            )
        except (CodecError, ValueError, TypeError, AttributeError, RecursionError) as e:
            raise _Damaged(str(e)) from None
        if meta.get("round") != rnd or state.round != rnd:
            raise _Damaged("its files disagree on the round")
        return state

    def _prune(self, current: int) -> None:
        """Keeps the ``KEEP`` newest rounds up to ``current``, the round just committed; a
        newer one is a leftover its run has now passed (e.g. a stray manifest)."""
        keep = set([r for r in self.rounds() if r <= current][:KEEP])
        for path in self.folder.iterdir():
            m = re.match(r"^round-(\d{6})\.", path.name)
            if m and int(m.group(1)) not in keep:
                path.unlink(missing_ok=True)

    def _refuse(self, what: str) -> FedpeftError:
        cannot, nothing = self.refusal
        return FedpeftError(f"run folder {self.folder.parent} {cannot}: {what}; {nothing}.")


class _Damaged(Exception):
    """A round's checkpoint that does not verify (the previous one may)."""
