"""Allocation policies: ``uniform`` (one spec for all), ``tiered`` (tier → spec) and
``utility`` (argmax U under the hard limits). Each decides one client at a time."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.allocation.catalogue import Candidate
from fedpeft.allocation.registry import get_policy, register_policy
from fedpeft.allocation.utility import (
    Allocation,
    AllocationProblem,
    ClientInfo,
    Evaluation,
    evaluate,
)
from fedpeft.errors import FedpeftError


def _fixed(
    problem: AllocationProblem, client: ClientInfo, candidate: Candidate, policy: str
) -> Allocation:
    """The policy's one candidate if it fits the client, else no assignment and why."""
    ev = evaluate(problem, candidate, client)
    tier = client.resources.tier
    if ev.feasible:
        reason = f"{policy} policy assigns {candidate.name} and it fits"
        return Allocation(client.client_id, tier, policy, candidate, ev.terms, reason, (ev,))
    broken = "; ".join(v.describe() for v in ev.violations)
    reason = f"{policy} policy's {candidate.name} does not fit: {broken}"
    return Allocation(client.client_id, tier, policy, None, None, reason, (ev,))


def uniform(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """Every client gets ``allocation.uniform``; a client it does not fit gets nothing."""
    if problem.uniform is None:
        raise FedpeftError("the uniform policy needs `allocation.uniform` = {method, options}.")
    return _fixed(problem, client, problem.uniform, "uniform")


def tiered(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """A client gets the candidate ``allocation.tiers`` maps its tier to."""
    tier = client.resources.tier
    if tier not in problem.tiered:
        raise FedpeftError(
            f"`allocation.tiers` has no entry for tier {tier!r} (client {client.client_id}); "
            f"add one (mapped: {', '.join(sorted(problem.tiered)) or 'none'})."
        )
    return _fixed(problem, client, problem.tiered[tier], "tiered")


def rank_key(ev: Evaluation, index: int) -> tuple[float, float, int]:
    """Higher ``U`` first; ties (to 1e-9) go to the smaller ``C``, then catalogue order."""
    return (-round(ev.terms.U, 9), round(ev.terms.C, 9), index)


def utility(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """``c* = argmax_c U(c,p)`` over the catalogue candidates within both hard limits."""
    evals = tuple(evaluate(problem, c, client) for c in problem.catalogue)
    feasible = [(i, ev) for i, ev in enumerate(evals) if ev.feasible]
    tier = client.resources.tier
    if not feasible:
        least = min(evals, key=lambda ev: ev.cost.round_seconds)
        broken = "; ".join(v.describe() for v in least.violations)
        reason = f"no candidate fits; the fastest, {least.candidate.name}, breaks {broken}"
        return Allocation(client.client_id, tier, "utility", None, None, reason, evals)
    index, best = min(feasible, key=lambda pair: rank_key(pair[1], pair[0]))
    reason = (
        f"highest U = {best.terms.U:.3f} among {len(feasible)} feasible candidates "
        f"({len(evals) - len(feasible)} rejected)"
    )
    return Allocation(client.client_id, tier, "utility", best.candidate, best.terms, reason, evals)


def allocate(problem: AllocationProblem, clients: Sequence[ClientInfo]) -> list[Allocation]:
    """One ``Allocation`` per client, in order, by ``problem.config.policy``."""
    policy = get_policy(problem.config.policy)
    return [policy(problem, client) for client in clients]


register_policy("uniform", uniform)
register_policy("tiered", tiered)
register_policy("utility", utility)
