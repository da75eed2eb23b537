"""Types shared by every part: adapter state, instructions, updates, round records."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NewType

from torch import Tensor

AdapterState = dict[str, Tensor]
"""A flat mapping from stable parameter names to tensors: the only thing that travels."""

GroupName = NewType("GroupName", str)
"""A server-side group: the clients whose updates average into one global adapter (the
run's one group, an allocated envelope, a cluster). Made with ``GroupName(...)`` where a
group is defined (``fedpeft.server.state``), so a stray string is a type error."""

GLOBAL_GROUP = GroupName("global")  # a homogeneous run's one group


@dataclass(frozen=True)
class TrainInstruction:
    """What the server asks one client to do in one round."""

    round: int
    client_id: int
    epochs: int
    steps: int | None
    batch_size: int
    lr: float
    weight_decay: float
    proximal_mu: float
    seed: int
    freeze: tuple[str, ...] = ()  # parameter-name parts to keep fixed (a strategy's client half)
    method: str = ""  # the PEFT method this client trains ("" = the run's [peft] method)
    options: str = "{}"  # that method's options, canonical JSON (sorted keys)
    group: GroupName = GLOBAL_GROUP  # the server-side group whose global it starts from
    nonce: str = ""  # fresh per instruction; the reply must echo it (binds reply to instruction)
    compression: str = ""  # the reply's CompressionScheme as JSON ("": the plain codec)
    compression_down: str = ""  # the payload's scheme ("": the plain codec; issue 15)
    run_id: str = ""  # the run this round belongs to (clients keep their states per run)
    privacy: str = ""  # the client's DP (privacy.ClientDp as JSON; "": none)
    personal: str = ""  # what the client keeps local: a PersonalPlan as JSON ("" = nothing)
    label_skew: str = "none"  # the client objective's label-skew rule (client/losses.py)
    label_skew_tau: float = 1.0  # its strength τ (FedRS: α)
    head_lr: float | None = None  # the task head's learning rate (None: ``lr``)
    kind: str = "train"  # "feature_stats" / "class_means": class feature statistics instead
    objective: str = ""  # the rule's client half ("": plain; "scaffold": client/scaffold.py)


@dataclass(frozen=True)
class ClientUpdate:
    """A client's result: its new adapter state, how many examples it saw, its metrics."""

    client_id: int
    state: AdapterState
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extras: AdapterState = field(default_factory=dict)  # sent beside the adapter (e.g. Δc_i)


class ClientStatus(StrEnum):
    """What became of one sampled client in one round."""

    OK = "ok"  # its update was accepted
    REJECTED = "rejected"  # it replied, but the reply failed validation or a guard
    FAILED = "failed"  # no usable reply: the client raised, timed out or vanished
    OFFLINE = "offline"  # skipped: its device was unavailable this round
    STRAGGLER = "straggler"  # skipped: predicted past the round deadline
    REFUSED = "refused"  # skipped: what it was asked to train does not fit its memory
    UNASSIGNED = "unassigned"  # skipped: the allocation found no configuration for it

    @property
    def skipped(self) -> bool:
        """Sampled but did not train (not the client's fault; never counts as a failure)."""
        return self in SKIPPED


SKIPPED = frozenset(
    {ClientStatus.OFFLINE, ClientStatus.STRAGGLER, ClientStatus.REFUSED, ClientStatus.UNASSIGNED}
)


@dataclass(frozen=True)
class ClientRecord:
    """One client in one round, as written to ``clients.jsonl``."""

    round: int
    client_id: int
    status: ClientStatus
    reason: str
    num_examples: int
    bytes_down: int
    bytes_up: int
    metrics: dict[str, float]
    group: GroupName = GLOBAL_GROUP
    config: str = ""  # the PEFT configuration (candidate name) it was assigned
    sim_time_s: float | None = None  # simulated round time on its device (None: not simulated)
    tier: str = ""  # its device's tier, when the runtime reports devices
    update_norm: float | None = None  # ‖θ_c − θ_served‖₂ measured by the server, before clipping


@dataclass(frozen=True)
class RoundRecord:
    """One round, as written to ``metrics.jsonl``."""

    round: int
    sampled: list[int]
    accepted: int
    rejected: int
    bytes_down: int
    bytes_up: int
    train_loss: float
    eval: dict[str, float]  # empty in a round without central evaluation (``eval.every``)
    wall_time_s: float
    eval_time_s: float
    client_time_s: float  # summed client training time (parallel clients overlap)
    clients: list[ClientRecord] = field(default_factory=list, repr=False)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # group → its eval
    sim_time_s: float | None = None  # simulated duration of the round / server step
    sim_clock_s: float | None = None  # simulated time since the start of the run
    quorum: bool = True  # False: fewer than server.min_clients updates; globals unchanged
    privacy: dict[str, float] = field(default_factory=dict)  # ε so far, δ, σ, S (DP runs)
    fit_time_s: float = 0.0  # wall time of the clients' round trips: wall − fit − eval = overhead
    # bytes and seconds per stage, survivors, threshold (runs with secure aggregation only)
    secure_aggregation: dict[str, object] = field(default_factory=dict)
    # clients asked, bytes down/up of the head's recalibration (``server.head_refresh``)
    head_refresh: dict[str, object] = field(default_factory=dict)
    # group → why its aggregation failed this round (its global adapter stayed as it was)
    aggregation_failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "clients"}
        for optional in ("secure_aggregation", "head_refresh", "aggregation_failed"):
            if not out[optional]:
                del out[optional]
        if self.clients:  # the clients that sent an update (accepted or not) and their bytes
            sent = [c.bytes_up for c in self.clients if c.bytes_up > 0]
            out["replies"], out["reply_bytes_up"] = len(sent), sum(sent)
        return out
