"""The utility of a candidate for a client, its hard limits, and the decision records.

``U(c,p) = α·R(c,p) − β·C(c,p) + γ·E(c)``, each term in [0, 1]:

- ``R = r̂_c · d(p) · (s/S)^w``: expected gain (``gain.py``): the configuration's prior from
  its capacity plus the credit it earned, the client's data, and the share ``s/S`` of its
  local steps it runs.
- ``C = (w_t·τ + w_m·μ + w_b·χ + w_r·ε) / (w_t + w_m + w_b + w_r)``:

  - ``τ = max(0, T − T_floor)/D``: the time the client adds to the round. A synchronous round
    lasts as long as its slowest member, so time below the round's floor ``T_floor`` (the
    slowest client's fastest feasible option) costs nothing (``round_aware``; otherwise
    ``T/D``). Oort (Lai et al., 2021, OSDI) prices clients' time against the round's
    duration the same way.
  - ``μ = M/M_p``: predicted peak memory over the client's memory.
  - ``χ = (8·B_down/bw_down + 8·B_up/bw_up)/D``: the bytes both ways at the client's own
    bandwidth, as a share of the deadline (a byte costs a slow link more).
  - ``ε = Φ((ln T − ln D)/σ)``: the risk of missing the deadline when the predicted time is
    off by a log-normal factor of spread ``σ`` (``time_error``; the cost model's step time
    is within ±8 % on the machine it was fitted on).
- ``E = cov(c)``: the share of the model's layers the update reaches (``gain.coverage``). It
  rewards where a client can act, not how many parameters it sends: a larger rank raises
  neither E nor, much, R, but it raises C.

Hard limits: ``M ≤ M_p`` and ``T ≤ D``. With ``adapt_steps`` a candidate that fits in memory
but misses the deadline runs fewer local steps, ``s = ⌊(D·e^{−σ} − T_transfer)/t_step⌋``
(one σ inside the deadline), if ``s ≥ min_work·S``; else it is rejected with the limit and
the excess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from fedpeft.allocation.catalogue import Candidate, build_catalogue, candidate_of
from fedpeft.allocation.cost import Calibration, Cost, Workload, predict_cost
from fedpeft.allocation.gain import (
    GainEstimator,
    capacity,
    coverage,
    data_scale,
    trained_blocks,
    work_scale,
)
from fedpeft.config import AllocationConfig
from fedpeft.data.partition import DataProfile
from fedpeft.peft import Architecture
from fedpeft.peft.lora import LoraSpec
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
    expressivity: Mapping[str, float]  # candidate name → E (coverage)
    capacity: Mapping[str, float]  # candidate name → κ
    estimator: GainEstimator = field(default_factory=GainEstimator)
    calibration: Calibration = field(default_factory=Calibration)
    round_floor_s: float = 0.0  # T_floor (set by ``allocate`` for round-aware time costs)
    round: int = 0  # the round being allocated (seeded per-round draws, e.g. FedRA)
    seed: int = 0
    round_clients: tuple[ClientInfo, ...] = ()  # every client of the round (set by allocate)
    shared_blocks: int | None = None  # LoRA's one depth this round (``shared_depth``)
    max_blocks: int | None = None  # LoRA's deepest depth this round (``depth_gate_tv``)


def build_problem(
    arch: Architecture,
    config: AllocationConfig | None = None,
    estimator: GainEstimator | None = None,
    calibration: Calibration | None = None,
    *,
    round: int = 0,
    seed: int = 0,
) -> AllocationProblem:
    """The catalogue and the fixed policies' candidates, with E and κ computed over all of
    them (so every policy's terms are comparable)."""
    cfg = config or AllocationConfig()
    catalogue = build_catalogue(arch, cfg.catalogue)
    uniform = candidate_of(cfg.uniform) if cfg.uniform else None
    tiered = {tier: candidate_of(c) for tier, c in cfg.tiers.items()}
    every = [*catalogue, *([uniform] if uniform else []), *tiered.values()]
    return AllocationProblem(
        arch,
        cfg,
        catalogue,
        uniform,
        tiered,
        {c.name: coverage(arch, c.spec) for c in every},
        capacity(arch, every, cfg.gain),
        estimator or GainEstimator(cfg.gain),
        calibration or Calibration(),
        round=round,
        seed=seed,
    )


@dataclass(frozen=True)
class Terms:
    R: float
    C: float
    E: float
    U: float
    parts: Mapping[str, float] = field(default_factory=dict)  # what R and C are made of

    def to_json(self) -> dict[str, object]:
        head: dict[str, object] = {k: round(getattr(self, k), 6) for k in "RCEU"}
        return head | {"parts": {k: round(v, 6) for k, v in self.parts.items()}}


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
    """One candidate priced for one client at ``cost.steps`` local steps (of its full
    ``full_steps``): its cost, terms and broken limits."""

    candidate: Candidate
    cost: Cost
    terms: Terms
    violations: tuple[Violation, ...]
    full_steps: int = 0

    @property
    def feasible(self) -> bool:
        return not self.violations

    @property
    def steps(self) -> int:
        return self.cost.steps


def violations(cost: Cost, client: ClientInfo, deadline_s: float) -> tuple[Violation, ...]:
    out = []
    if cost.memory_bytes > client.resources.memory_bytes:
        out.append(Violation("memory", cost.memory_bytes, client.resources.memory_bytes))
    if cost.round_seconds > deadline_s:
        out.append(Violation("deadline", cost.round_seconds, deadline_s))
    return tuple(out)


def deadline_risk(seconds: float, deadline_s: float, sigma: float) -> float:
    """``ε = Φ((ln T − ln D)/σ)``: the chance a log-normal error of spread σ pushes T past D."""
    if seconds <= 0:
        return 0.0
    z = (math.log(seconds) - math.log(deadline_s)) / sigma
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def cost_parts(cost: Cost, client: ClientInfo, problem: AllocationProblem) -> dict[str, float]:
    """``τ``, ``μ``, ``χ`` and ``ε`` (see the module docstring), each in [0, 1]."""
    cfg, d = problem.config, problem.config.deadline_s
    floor = problem.round_floor_s if cfg.round_aware else 0.0
    return {
        "time": min(1.0, max(0.0, cost.round_seconds - floor) / d),
        "memory": min(1.0, cost.memory_bytes / client.resources.memory_bytes),
        "bytes": min(1.0, cost.transfer_seconds / d),
        "risk": deadline_risk(cost.round_seconds, d, cfg.time_error),
    }


def normalised_cost(parts: Mapping[str, float], problem: AllocationProblem) -> float:
    """``C``: the weighted mean of the four parts."""
    w = problem.config.cost_weights
    weights = {"time": w.time, "memory": w.memory, "bytes": w.bytes, "risk": w.risk}
    return sum(weights[k] * parts[k] for k in weights) / sum(weights.values())


def price(
    problem: AllocationProblem, candidate: Candidate, client: ClientInfo, steps: int | None = None
) -> Cost:
    """The cost model's prediction for ``candidate`` on ``client`` at ``steps`` local steps
    (``None``: its full workload)."""
    cfg, work = problem.config, client.workload
    if steps is not None:
        work = replace(work, steps=steps)
    return predict_cost(
        problem.arch,
        candidate.spec,
        work,
        client.resources,
        cfg.bits_down,
        cfg.bits_up,
        cfg.optimizer,
        problem.calibration,
    )


def fitted_steps(cost: Cost, problem: AllocationProblem) -> int:
    """``s = ⌊(D·e^{−σ} − T_transfer)/t_step⌋``: the most local steps that end one σ inside
    the deadline (0 when the transfer alone does not fit)."""
    cfg = problem.config
    budget = cfg.deadline_s * math.exp(-cfg.time_error) - cost.transfer_seconds
    if budget <= 0 or cost.step_seconds <= 0:
        return 0
    return min(cost.steps, math.floor(budget / cost.step_seconds))


def evaluate(
    problem: AllocationProblem, candidate: Candidate, client: ClientInfo, adapt: bool = False
) -> Evaluation:
    """Prices ``candidate`` for ``client`` and computes ``R``, ``C``, ``E`` and ``U``; with
    ``adapt`` a candidate that misses only the deadline runs fewer steps when it can."""
    cfg = problem.config
    full = client.workload.steps
    cost = price(problem, candidate, client)
    broken = violations(cost, client, cfg.deadline_s)
    if adapt and [v.limit for v in broken] == ["deadline"]:
        steps = fitted_steps(cost, problem)
        if steps >= max(1, math.ceil(cfg.min_work * full)):
            cost = price(problem, candidate, client, steps)
            broken = violations(cost, client, cfg.deadline_s)
    return Evaluation(candidate, cost, terms(problem, candidate, client, cost), broken, full)


def terms(
    problem: AllocationProblem, candidate: Candidate, client: ClientInfo, cost: Cost
) -> Terms:
    """``R``, ``C``, ``E`` and ``U`` with what ``R`` and ``C`` are made of."""
    cfg = problem.config
    kappa = problem.capacity.get(candidate.name, 1.0)
    est = problem.estimator
    data = data_scale(client.data, cfg.gain.half_examples)
    work = work_scale(cost.steps, client.workload.steps, cfg.gain.work_exponent)
    r = est.mean(candidate, kappa) * data * work
    parts = cost_parts(cost, client, problem)
    c = normalised_cost(parts, problem)
    e = problem.expressivity.get(candidate.name, 1.0)
    u = cfg.alpha * r - cfg.beta * c + cfg.gamma * e
    detail = {
        "R.prior": est.prior(candidate),
        "R.capacity": kappa,
        "R.credit": est.deviation(candidate),
        "R.data": data,
        "R.work": work,
    } | {f"C.{k}": v for k, v in parts.items()}
    return Terms(r, c, e, u, detail)


@dataclass(frozen=True)
class Allocation:
    """One client's decision: the chosen candidate (or ``None``) and its local steps, why,
    and every candidate the policy priced (rejected ones with the limit they break)."""

    client_id: int
    tier: str
    policy: str
    chosen: Candidate | None
    terms: Terms | None
    reason: str
    evaluations: tuple[Evaluation, ...]
    steps: int | None = None  # local steps when the policy shortened them, else None

    @property
    def chosen_evaluation(self) -> Evaluation | None:
        if self.chosen is None:
            return None
        return next((e for e in self.evaluations if e.candidate.name == self.chosen.name), None)


def lora_blocks(arch: Architecture, candidate: Candidate) -> int | None:
    """The blocks a LoRA candidate trains, counted from the top (None: another method)."""
    return trained_blocks(arch, candidate.spec) if isinstance(candidate.spec, LoraSpec) else None


def competing(problem: AllocationProblem) -> tuple[Candidate, ...]:
    """The catalogue candidates a client chooses from: all of them, or with
    ``shared_blocks`` set the LoRA ones at that depth, with ``max_blocks`` the LoRA ones
    no deeper (other methods are kept)."""
    shared, deepest = problem.shared_blocks, problem.max_blocks
    out = problem.catalogue
    if shared is not None:
        out = tuple(c for c in out if lora_blocks(problem.arch, c) in (None, shared))
    if deepest is not None:
        out = tuple(c for c in out if (lora_blocks(problem.arch, c) or 0) <= deepest)
    return out


def with_floor(problem: AllocationProblem, clients: Sequence[ClientInfo]) -> AllocationProblem:
    """``problem`` with ``T_floor = max_p min_c T(c, p)`` over each client's feasible
    candidates (after step adaptation): the shortest the round can be with everyone in."""
    floor = 0.0
    adapt = problem.config.adapt_steps
    for client in clients:
        times = [
            ev.cost.round_seconds
            for ev in (evaluate(problem, c, client, adapt) for c in competing(problem))
            if ev.feasible
        ]
        floor = max(floor, min(times, default=0.0))
    return replace(problem, round_floor_s=floor)
