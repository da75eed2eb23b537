"""The utility of a candidate for a client, its hard limits, and the decision records.

``U(c,p) = α·R(c,p) − β·C(c,p) + γ·E(c)``, each term in [0, 1]:

- ``R = r̂_c · d(p)``: expected gain (``gain.py``).
- ``C = (w_t·min(1, T/T_max) + w_m·min(1, M/M_p) + w_b·B/B_max) / (w_t + w_m + w_b)``:
  predicted round time over the deadline, peak memory over the client's memory, and bytes
  both ways over the largest candidate's.
- ``E = (log(1+T_c) − min) / (max − min)`` over the candidate set: expressivity from
  trainable parameters ``T_c`` (1 for all when they are equal).

Hard limits: ``M ≤ M_p`` and ``T ≤ T_max``; a candidate breaking one is rejected with
the limit and the excess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fedpeft.allocation.catalogue import Candidate, build_catalogue, candidate_of
from fedpeft.allocation.cost import Calibration, Cost, Workload, predict_cost, update_bytes
from fedpeft.allocation.gain import GainEstimator, data_scale
from fedpeft.config import AllocationConfig
from fedpeft.data.partition import DataProfile
from fedpeft.peft import Architecture
from fedpeft.profiling import GiB, ResourceProfile


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows about a client when it allocates."""

    client_id: int
    resources: ResourceProfile
    workload: Workload
    data: DataProfile | None = None


@dataclass(frozen=True)
class AllocationProblem:
    """Everything shared by one round's decisions; ``build_problem`` makes one."""

    arch: Architecture
    config: AllocationConfig
    catalogue: tuple[Candidate, ...]
    uniform: Candidate | None
    tiered: Mapping[str, Candidate]
    expressivity: Mapping[str, float]  # candidate name → E
    max_bytes: int  # the largest bytes down + up in the candidate set
    estimator: GainEstimator = field(default_factory=GainEstimator)
    calibration: Calibration = field(default_factory=Calibration)


def expressivity(arch: Architecture, candidates: Sequence[Candidate]) -> dict[str, float]:
    """``E_c = (log(1+T_c) − min_c' log(1+T_c')) / (max − min)``; 1 when all are equal."""
    logs = {c.name: math.log1p(c.spec.trainable_params(arch)) for c in candidates}
    low, high = min(logs.values()), max(logs.values())
    return {n: (v - low) / (high - low) if high > low else 1.0 for n, v in logs.items()}


def build_problem(
    arch: Architecture,
    config: AllocationConfig | None = None,
    estimator: GainEstimator | None = None,
    calibration: Calibration | None = None,
) -> AllocationProblem:
    """The catalogue and the fixed policies' candidates, with E and the byte scale computed
    over all of them (so the three policies' terms are comparable)."""
    cfg = config or AllocationConfig()
    catalogue = build_catalogue(arch, cfg.catalogue)
    uniform = candidate_of(cfg.uniform) if cfg.uniform else None
    tiered = {tier: candidate_of(c) for tier, c in cfg.tiers.items()}
    every = [*catalogue, *([uniform] if uniform else []), *tiered.values()]
    max_bytes = max(
        update_bytes(arch, c.spec, cfg.bits_down) + update_bytes(arch, c.spec, cfg.bits_up)
        for c in every
    )
    return AllocationProblem(
        arch,
        cfg,
        catalogue,
        uniform,
        tiered,
        expressivity(arch, every),
        max(1, max_bytes),
        estimator or GainEstimator(cfg.gain),
        calibration or Calibration(),
    )


@dataclass(frozen=True)
class Terms:
    R: float
    C: float
    E: float
    U: float

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Violation:
    """A hard limit a candidate breaks: what it needs, what is allowed."""

    limit: Literal["memory", "deadline"]
    needed: float
    allowed: float

    def describe(self) -> str:
        if self.limit == "memory":
            return (
                f"memory {self.needed / GiB:.2f} GiB > {self.allowed / GiB:.2f} GiB "
                f"(+{(self.needed - self.allowed) / GiB:.2f} GiB)"
            )
        return (
            f"round {self.needed:.1f} s > deadline {self.allowed:.1f} s "
            f"(+{self.needed - self.allowed:.1f} s)"
        )


@dataclass(frozen=True)
class Evaluation:
    """One candidate priced for one client: its cost, terms and broken limits."""

    candidate: Candidate
    cost: Cost
    terms: Terms
    violations: tuple[Violation, ...]

    @property
    def feasible(self) -> bool:
        return not self.violations


def violations(cost: Cost, client: ClientInfo, deadline_s: float) -> tuple[Violation, ...]:
    out = []
    if cost.memory_bytes > client.resources.memory_bytes:
        out.append(Violation("memory", cost.memory_bytes, client.resources.memory_bytes))
    if cost.round_seconds > deadline_s:
        out.append(Violation("deadline", cost.round_seconds, deadline_s))
    return tuple(out)


def normalised_cost(cost: Cost, client: ClientInfo, problem: AllocationProblem) -> float:
    """``C``: the weighted mean of time/deadline, memory/client memory, bytes/largest."""
    w, deadline = problem.config.cost_weights, problem.config.deadline_s
    time = min(1.0, cost.round_seconds / deadline)
    memory = min(1.0, cost.memory_bytes / client.resources.memory_bytes)
    size = min(1.0, (cost.bytes_down + cost.bytes_up) / problem.max_bytes)
    return (w.time * time + w.memory * memory + w.bytes * size) / (w.time + w.memory + w.bytes)


def evaluate(problem: AllocationProblem, candidate: Candidate, client: ClientInfo) -> Evaluation:
    """Prices ``candidate`` for ``client`` and computes ``R``, ``C``, ``E`` and ``U``."""
    cfg = problem.config
    cost = predict_cost(
        problem.arch,
        candidate.spec,
        client.workload,
        client.resources,
        cfg.bits_down,
        cfg.bits_up,
        cfg.optimizer,
        problem.calibration,
    )
    r = problem.estimator.mean(candidate) * data_scale(client.data, cfg.gain.half_examples)
    c = normalised_cost(cost, client, problem)
    e = problem.expressivity.get(candidate.name, 1.0)
    u = cfg.alpha * r - cfg.beta * c + cfg.gamma * e
    return Evaluation(candidate, cost, Terms(r, c, e, u), violations(cost, client, cfg.deadline_s))


@dataclass(frozen=True)
class Allocation:
    """One client's decision: the chosen candidate (or ``None``), why, and every candidate
    the policy priced (rejected ones with the limit they break)."""

    client_id: int
    tier: str
    policy: str
    chosen: Candidate | None
    terms: Terms | None
    reason: str
    evaluations: tuple[Evaluation, ...]
