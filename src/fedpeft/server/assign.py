"""Which PEFT configuration each client trains, and which group's global it shares.

With ``allocation.enabled = false`` (the default) every client trains ``[peft]`` in one
group, ``global``. With it on, the configured policy decides per client and round from the
client's resource and data profiles (``fedpeft.allocation``); the gain estimator behind R
is updated from each round's observed validation gains, so decisions can change over a run.

Groups: every LoRA candidate joins the group ``lora``, whose global is the envelope of all
its clients' ranks and placements (``aggregation.hetero``); every other candidate is a
group of its own (its clients aggregated together, per method group).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedpeft.allocation import (
    Allocation,
    AllocationConfig,
    Candidate,
    ClientInfo,
    GainEstimator,
    allocate,
    allocation_to_json,
    build_problem,
    client_workload,
    make_allocation_config,
    make_candidate,
)
from fedpeft.config import ExperimentConfig
from fedpeft.data import DataProfile
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture
from fedpeft.profiling import ResourceProfile
from fedpeft.server.state import DEFAULT_GROUP


def options_json(options: Mapping[str, object]) -> str:
    """Canonical JSON of a method's options (the key under which clients cache models)."""
    return json.dumps(dict(options), sort_keys=True)


@dataclass(frozen=True)
class Assignment:
    """One client's configuration for a round; ``candidate`` None means it trains nothing."""

    client_id: int
    candidate: Candidate | None
    group: str
    reason: str
    alpha: float | None = None  # LoRA α when the group's factors are kept in effective units

    @property
    def config(self) -> str:
        return self.candidate.name if self.candidate else ""


def group_of(candidate: Candidate) -> str:
    return candidate.spec.envelope_group or candidate.name


def client_infos(
    cfg: ExperimentConfig,
    ids: Sequence[int],
    devices: Sequence[ResourceProfile],
    data: Sequence[DataProfile],
) -> list[ClientInfo]:
    """What the allocation knows of each client: device, workload (from its data), data."""
    c = cfg.client
    return [
        ClientInfo(
            cid,
            device,
            client_workload(profile, c.batch_size, cfg.model.max_length, c.epochs, c.steps),
            profile,
        )
        for cid, device, profile in zip(ids, devices, data, strict=True)
    ]


class Assigner:
    """Per-round assignments; holds the gain estimator that the observed gains update."""

    def __init__(self, cfg: ExperimentConfig, arch: Architecture | None) -> None:
        self.cfg = cfg
        self.arch = arch
        self.config: AllocationConfig = make_allocation_config(cfg.allocation)
        self.estimator = GainEstimator(self.config.gain)
        self.default = make_candidate(cfg.peft.method, cfg.peft.options, cfg.peft.method)
        self.last: list[Allocation] = []  # the last round's decisions, for the run folder

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def assign(self, clients: Sequence[ClientInfo]) -> dict[int, Assignment]:
        if not self.enabled:
            return {c.client_id: self.fixed(c.client_id) for c in clients}
        if self.arch is None:
            raise FedpeftError("the allocation needs the model's architecture; none was given.")
        problem = build_problem(self.arch, self.config, self.estimator)
        self.last = allocate(problem, clients)
        return {a.client_id: _assignment(a) for a in self.last}

    def decisions_json(self, rnd: int) -> list[dict[str, object]]:
        """The last round's decisions, every candidate with its terms or broken limit."""
        return [{"round": rnd, **allocation_to_json(a)} for a in self.last]

    def fixed(self, client_id: int) -> Assignment:
        """The run's ``[peft]`` method in the one group (no allocation)."""
        return Assignment(client_id, self.default, DEFAULT_GROUP, "")

    def observe(self, candidates: Sequence[Candidate], gain: float) -> None:
        """Every candidate trained in a group this round observes that group's gain."""
        for candidate in {c.name: c for c in candidates}.values():
            self.estimator = self.estimator.update(candidate, gain)

    def restore(self, estimator: GainEstimator | None) -> None:
        """The estimator a checkpoint saved (``ServerState.gain``)."""
        if estimator is not None:
            self.estimator = estimator


def _assignment(allocation: Allocation) -> Assignment:
    cand = allocation.chosen
    if cand is None:
        return Assignment(allocation.client_id, None, "", allocation.reason)
    alpha = cand.spec.envelope_alpha()
    return Assignment(allocation.client_id, cand, group_of(cand), allocation.reason, alpha)
