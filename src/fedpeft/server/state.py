"""What the server carries from round to round, and checkpoints: a typed, versioned record.

Tensors (each group's global adapter, the server optimiser's buffers) travel in safetensors
files; everything else is ``to_json``/``from_json`` of this dataclass, checked field by field
when read back (``docs/architecture.md`` documents the format). A state of another format
version is refused, never guessed at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fedpeft.allocation import Candidate, GainEstimator, make_candidate
from fedpeft.errors import FedpeftError
from fedpeft.privacy import PrivacyLedger
from fedpeft.types import GLOBAL_GROUP, AdapterState, GroupName

STATE_FORMAT = 3
"""Version of the checkpoint format: 1 was stop 9's untyped ``state.json`` + ``extra``; 2 had
no SCAFFOLD controls (``control_groups``), 3 has them."""
READABLE_FORMATS = (2, STATE_FORMAT)  # format 2 reads as format 3 without controls

DEFAULT_GROUP = GLOBAL_GROUP  # a homogeneous run's one group
LORA_GROUP = GroupName("lora")  # every LoRA configuration of an allocated run


def cluster_group(label: int) -> GroupName:
    """The group that holds cluster ``label``'s global (clustered aggregation)."""
    return GroupName(f"cluster-{label}")


@dataclass(frozen=True)
class AsyncProgress:
    """The asynchronous loop's clock and dispatcher between server steps (JSON part; the
    in-flight clients' tensors are saved beside it)."""

    now: float = 0.0  # simulated seconds
    seq: int = 0  # events scheduled so far (ties in finish time break by this)
    dispatched: int = 0  # client round trips started so far
    failures: int = 0  # consecutive failed or rejected replies
    idle: int = 0  # consecutive replies without an accepted update
    rng: dict[str, Any] = field(default_factory=dict)  # numpy bit generator state
    flights: list[dict[str, Any]] = field(default_factory=list)  # in-flight clients (JSON)
    norms: list[float] = field(default_factory=list)  # recent update norms (the norm guard)


@dataclass(frozen=True)
class ServerState:
    """The server between rounds. ``round`` is the last completed round (0: none yet)."""

    adapters: dict[str, AdapterState]  # group → its global adapter
    optimizer: dict[str, AdapterState] = field(default_factory=dict)  # group → buffers
    round: int = 0
    main: str = DEFAULT_GROUP  # the group exported as `adapter/` (most examples trained)
    examples: dict[str, int] = field(default_factory=dict)  # group → examples trained on
    members: dict[str, tuple[Candidate, ...]] = field(default_factory=dict)  # configurations
    gain: GainEstimator | None = None  # the allocation's R estimator (allocated runs)
    last_accuracy: dict[str, float] = field(default_factory=dict)  # group → last eval
    clusters: dict[int, int] = field(default_factory=dict)  # client → cluster label
    sim_clock_s: float | None = None  # simulated seconds since the start (simulated runs)
    progress: AsyncProgress | None = None  # the asynchronous loop's clock (async runs)
    inflight: dict[str, AdapterState] = field(default_factory=dict)  # async: flights' tensors
    privacy: PrivacyLedger | None = None  # DP runs: accountants, σ, S, the budget
    controls: dict[str, AdapterState] = field(default_factory=dict)  # SCAFFOLD: group → c

    @property
    def adapter(self) -> AdapterState:
        """The main group's global adapter (the only one in a homogeneous run)."""
        return self.adapters[self.main]

    def evolve(self, **changes: Any) -> ServerState:
        return replace(self, **changes)

    def group_of(self, client_id: int, assigned: GroupName) -> GroupName:
        """The group that serves a client: its cluster's, once it has one."""
        label = self.clusters.get(client_id)
        return cluster_group(label) if label is not None else assigned

    # ---- JSON ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Every field but the tensors, with the format version."""
        return {
            "format": STATE_FORMAT,
            "round": self.round,
            "groups": sorted(self.adapters),
            "optimizer_groups": sorted(self.optimizer),
            "inflight_groups": sorted(self.inflight),
            "control_groups": sorted(self.controls),
            "main": self.main,
            "examples": dict(sorted(self.examples.items())),
            "members": {g: [c.to_json() for c in m] for g, m in sorted(self.members.items())},
            "gain": self.gain.to_json() if self.gain is not None else None,
            "last_accuracy": dict(sorted(self.last_accuracy.items())),
            "clusters": {str(c): g for c, g in sorted(self.clusters.items())},
            "sim_clock_s": self.sim_clock_s,
            "async": None if self.progress is None else self.progress.__dict__,
            "privacy": None if self.privacy is None else self.privacy.to_json(),
        }

    @classmethod
    def from_json(
        cls,
        raw: Mapping[str, Any],
        adapters: dict[str, AdapterState],
        optimizer: dict[str, AdapterState],
        inflight: dict[str, AdapterState] | None = None,
        controls: dict[str, AdapterState] | None = None,
    ) -> ServerState:
        """Checks every field; raises ``ValueError`` naming the first that is wrong and
        ``FedpeftError`` for another format version."""
        version = raw.get("format")
        if version not in READABLE_FORMATS:
            raise FedpeftError(
                f"the checkpoint has format {version!r} but this fedpeft reads formats "
                f"{READABLE_FORMATS[0]}–{STATE_FORMAT}; resume it with the fedpeft version that "
                "wrote it."
            )
        inflight, controls = inflight or {}, controls or {}
        if version == 2:
            raw = {**raw, "control_groups": []}
        named = (
            (adapters, "groups"),
            (optimizer, "optimizer_groups"),
            (inflight, "inflight_groups"),
            (controls, "control_groups"),
        )
        if any(sorted(tensors) != _strs(raw, key) for tensors, key in named):
            raise ValueError("its tensors hold other groups than its state names")
        main = _str(raw, "main")
        if adapters and main not in adapters:
            raise ValueError(f"its main group {main!r} has no adapter")
        return cls(
            adapters=adapters,
            optimizer=optimizer,
            round=_nonneg_int(raw.get("round"), "round"),
            main=main,
            examples={k: _nonneg_int(v, "examples") for k, v in _dict(raw, "examples").items()},
            members=_members(_dict(raw, "members")),
            gain=None if raw.get("gain") is None else GainEstimator.from_json(_dict(raw, "gain")),
            last_accuracy={k: _finite(v) for k, v in _dict(raw, "last_accuracy").items()},
            clusters={
                _int_key(k): _nonneg_int(v, "clusters") for k, v in _dict(raw, "clusters").items()
            },
            sim_clock_s=None if raw.get("sim_clock_s") is None else _finite(raw["sim_clock_s"]),
            progress=None if raw.get("async") is None else _progress(_dict(raw, "async")),
            inflight=inflight,
            privacy=None if raw.get("privacy") is None else PrivacyLedger.from_json(raw["privacy"]),
            controls=controls,
        )


def _dict(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"its `{key}` is not an object")
    return value


def _strs(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"its `{key}` is not a list of names")
    return sorted(value)


def _str(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise ValueError(f"its `{key}` is not a string")
    return value


def _nonneg_int(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"its `{key}` holds {value!r}, not an integer ≥ 0")
    return value


def _int_key(key: str) -> int:
    if not key.isdigit():
        raise ValueError(f"its client id {key!r} is not an integer")
    return int(key)


def _finite(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _members(raw: dict[str, Any]) -> dict[str, tuple[Candidate, ...]]:
    out: dict[str, tuple[Candidate, ...]] = {}
    for group, members in raw.items():
        if not isinstance(members, list):
            raise ValueError(f"its members of {group!r} are not a list")
        try:
            out[group] = tuple(
                make_candidate(m["method"], m["options"], m["name"]) for m in members
            )
        except (KeyError, TypeError, FedpeftError) as e:
            raise ValueError(f"a member configuration of {group!r} is invalid ({e})") from None
    return out


def _progress(raw: dict[str, Any]) -> AsyncProgress:
    flights = raw.get("flights", [])
    rng = raw.get("rng", {})
    norms = raw.get("norms", [])
    if not isinstance(flights, list) or not isinstance(rng, dict) or not isinstance(norms, list):
        raise ValueError("its asynchronous progress is malformed")
    return AsyncProgress(
        now=_finite(raw.get("now")),
        seq=_nonneg_int(raw.get("seq"), "async.seq"),
        dispatched=_nonneg_int(raw.get("dispatched"), "async.dispatched"),
        failures=_nonneg_int(raw.get("failures"), "async.failures"),
        idle=_nonneg_int(raw.get("idle"), "async.idle"),
        rng=rng,
        flights=flights,
        norms=[_finite(n) for n in norms],
    )
