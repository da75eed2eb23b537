"""Allocation policies: ``uniform`` (one spec for all), ``tiered`` (tier → spec) and
``utility`` (argmax U under the hard limits, local steps shortened when that is what fits).
Each decides one client at a time; the published baselines are in ``baselines.py``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from fedpeft.allocation.catalogue import Candidate
from fedpeft.allocation.registry import get_policy, register_policy
from fedpeft.allocation.utility import (
    Allocation,
    AllocationProblem,
    ClientInfo,
    Evaluation,
    competing,
    evaluate,
    lora_blocks,
    with_floor,
)
from fedpeft.errors import FedpeftError
from fedpeft.peft.lora import LoraSpec


def fixed(
    problem: AllocationProblem,
    client: ClientInfo,
    candidate: Candidate,
    policy: str,
    ignore_limits: bool = False,
) -> Allocation:
    """The policy's one candidate if it fits the client (or limits are ignored), else no
    assignment and why. Fixed policies train the full local steps."""
    ev = evaluate(problem, candidate, client)
    tier = client.resources.tier
    broken = "; ".join(v.describe() for v in ev.violations)
    if ev.feasible or ignore_limits:
        fits = "it fits" if ev.feasible else f"limits are ignored ({broken})"
        reason = f"{policy} policy assigns {candidate.name} and {fits}"
        return Allocation(client.client_id, tier, policy, candidate, ev.terms, reason, (ev,))
    reason = f"{policy} policy's {candidate.name} does not fit: {broken}"
    return Allocation(client.client_id, tier, policy, None, None, reason, (ev,))


def uniform(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """Every client gets ``allocation.uniform``; a client it does not fit gets nothing."""
    if problem.uniform is None:
        raise FedpeftError("the uniform policy needs `allocation.uniform` = {method, options}.")
    return fixed(problem, client, problem.uniform, "uniform")


def tiered(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """A client gets the candidate ``allocation.tiers`` maps its tier to."""
    tier = client.resources.tier
    if tier not in problem.tiered:
        raise FedpeftError(
            f"`allocation.tiers` has no entry for tier {tier!r} (client {client.client_id}); "
            f"add one (mapped: {', '.join(sorted(problem.tiered)) or 'none'})."
        )
    return fixed(problem, client, problem.tiered[tier], "tiered")


def rank_key(ev: Evaluation, index: int) -> tuple[float, float, int]:
    """Higher ``U`` first; ties (to 1e-9) go to the smaller ``C``, then catalogue order."""
    return (-round(ev.terms.U, 9), round(ev.terms.C, 9), index)


def best_of(
    client: ClientInfo, evals: tuple[Evaluation, ...], policy: str, what: str = "candidates"
) -> Allocation:
    """The feasible evaluation with the highest ``U`` (``rank_key``), or none and why."""
    tier = client.resources.tier
    if not evals:
        reason = f"no {what} compete (the catalogue offers none under this round's limits)"
        return Allocation(client.client_id, tier, policy, None, None, reason, evals)
    feasible = [(i, ev) for i, ev in enumerate(evals) if ev.feasible]
    if not feasible:
        least = min(evals, key=lambda ev: ev.cost.round_seconds)
        broken = "; ".join(v.describe() for v in least.violations)
        reason = f"no candidate fits; the fastest, {least.candidate.name}, breaks {broken}"
        return Allocation(client.client_id, tier, policy, None, None, reason, evals)
    index, best = min(feasible, key=lambda pair: rank_key(pair[1], pair[0]))
    reason = (
        f"highest U = {best.terms.U:.3f} among {len(feasible)} feasible {what} "
        f"({len(evals) - len(feasible)} rejected)"
    )
    steps = best.steps if best.steps < best.full_steps else None
    if steps is not None:
        reason += f"; {steps} of {best.full_steps} local steps to meet the deadline"
    return Allocation(
        client.client_id, tier, policy, best.candidate, best.terms, reason, evals, steps
    )


def utility(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """``c* = argmax_c U(c,p)`` over the catalogue candidates within both hard limits (local
    steps shortened to meet the deadline when ``adapt_steps``); with ``shared_depth`` only
    the LoRA candidates at the round's one depth (``with_shared_depth``) compete."""
    adapt = problem.config.adapt_steps
    shared = problem.shared_blocks
    evals = tuple(evaluate(problem, c, client, adapt) for c in competing(problem))
    out = best_of(client, evals, "utility")
    if shared is not None:
        out = replace(
            out, reason=f"{out.reason}; LoRA on the top {shared} block(s), the round's shared depth"
        )
    return out


def with_shared_depth(
    problem: AllocationProblem, clients: Sequence[ClientInfo]
) -> AllocationProblem:
    """``problem`` with ``shared_blocks``: the LoRA depth (blocks, from the top) at which
    the most of ``clients`` have a feasible candidate, the deepest among equals — with
    model-relative tiers, the deepest the weakest client present can hold."""
    adapt = problem.config.adapt_steps
    depth = {
        c.name: b for c in problem.catalogue if (b := lora_blocks(problem.arch, c)) is not None
    }
    if not depth:
        return problem
    held = dict.fromkeys(depth.values(), 0)
    for client in clients:
        fits = {
            depth[c.name]
            for c in problem.catalogue
            if c.name in depth and evaluate(problem, c, client, adapt).feasible
        }
        for blocks in fits:
            held[blocks] += 1
    return replace(problem, shared_blocks=max(held, key=lambda b: (held[b], b)))


def label_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Total variation between two label histograms (each normalised; 0 when either is empty)."""
    sa, sb = sum(a), sum(b)
    if sa <= 0 or sb <= 0:
        return 0.0
    return 0.5 * sum(abs(x / sa - y / sb) for x, y in zip(a, b, strict=True))


def label_histograms(clients: Sequence[ClientInfo]) -> list[list[int]] | None:
    """Each client's label histogram padded to one width, or None when any is unknown."""
    hists = [list(c.data.label_histogram) for c in clients if c.data is not None]
    if not hists or len(hists) < len(clients):
        return None
    width = max(len(h) for h in hists)
    return [h + [0] * (width - len(h)) for h in hists]


def offered_depths(problem: AllocationProblem) -> list[int]:
    """The LoRA depths (blocks from the top) the catalogue offers, shallowest first."""
    return sorted({b for c in problem.catalogue if (b := lora_blocks(problem.arch, c)) is not None})


def depth_gate(
    problem: AllocationProblem, clients: Sequence[ClientInfo], allocations: Sequence[Allocation]
) -> tuple[int, int, float] | None:
    """``(cap, depth, tv)`` when ``depth_gate_tv`` binds: the shallowest catalogue LoRA depth
    above the shallowest whose trainers (the clients allocated that deep or deeper) hold,
    pooled, labels at total variation ``tv`` above the gate from the round's, and ``cap`` the
    catalogue depth below it; None when no depth does or a client's label histogram is
    unknown.

    Why: a block only some clients train moves with their labels (``partial_keys``), and
    under the natural split those are the strong tiers' classes. Measured before it was
    built (BENCHMARKS, *do the deep trainers' labels explain where utility loses?*)."""
    gate = problem.config.depth_gate_tv
    if not gate or problem.config.policy != "utility":  # 0 / None: off
        return None
    padded = label_histograms(clients)
    if padded is None:
        return None
    depth = [
        (lora_blocks(problem.arch, a.chosen) or 0) if a.chosen is not None else 0
        for a in allocations
    ]
    everyone = [sum(col) for col in zip(*padded, strict=True)]
    offered = offered_depths(problem)
    # only depths the catalogue offers: a cap must leave a candidate (SmolLM2's shallowest
    # LoRA depth is 5 blocks; capping "above 2" would leave none)
    for above, k in zip(offered, offered[1:], strict=False):
        pool = [h for h, d in zip(padded, depth, strict=True) if d >= k]
        if not pool:
            break
        tv = label_distance([sum(col) for col in zip(*pool, strict=True)], everyone)
        if tv > gate:
            return above, k, tv
    return None


def with_client_gate(
    problem: AllocationProblem,
    clients: Sequence[ClientInfo],
    allocations: list[Allocation],
    policy: Callable[[AllocationProblem, ClientInfo], Allocation],
) -> list[Allocation]:
    """``allocations`` with each client ``client_gate_tv`` caps allocated again, its LoRA on
    the catalogue's shallowest depth: a client allocated deeper whose own label histogram is
    at total variation above the gate from the round's (nothing changes when the gate is off
    or a histogram is unknown; the round's floor is kept: a capped client is only faster).

    Why: the pooled ``depth_gate`` cannot see a round whose deep trainers are balanced
    together but each skewed — each one's update drifts towards its own classes in every
    block it trains (on SST-2 under Dirichlet 0.5, the more blocks a policy trained, the lower
    it ended: BENCHMARKS issue 13)."""
    gate = problem.config.client_gate_tv
    if not gate or problem.config.policy != "utility":  # 0 / None: off
        return allocations
    padded, offered = label_histograms(clients), offered_depths(problem)
    if padded is None or not offered:
        return allocations
    everyone = [sum(col) for col in zip(*padded, strict=True)]
    narrow = replace(problem, max_blocks=offered[0])
    out = list(allocations)
    for i, (hist, a) in enumerate(zip(padded, allocations, strict=True)):
        depth = lora_blocks(problem.arch, a.chosen) if a.chosen is not None else None
        tv = label_distance(hist, everyone)
        if depth is None or depth <= offered[0] or tv <= gate:
            continue
        why = (
            f"; LoRA capped at the top {offered[0]} block(s): its own labels are at total "
            f"variation {tv:.2f} from the round's (allocation.client_gate_tv = {gate:g})"
        )
        capped = policy(narrow, clients[i])
        out[i] = replace(capped, reason=capped.reason + why)
    return out


def lora_sibling(problem: AllocationProblem, candidate: Candidate, rank: int) -> Candidate | None:
    """The catalogue's LoRA candidate with ``candidate``'s blocks and targets at ``rank``."""
    spec = candidate.spec
    if not isinstance(spec, LoraSpec):
        return None
    for c in problem.catalogue:
        other = c.spec
        if (
            isinstance(other, LoraSpec)
            and other.r == rank
            and other.layers == spec.layers
            and other.target_modules == spec.target_modules
        ):
            return c
    return None


def with_shared_rank(
    problem: AllocationProblem, clients: Sequence[ClientInfo], allocations: Sequence[Allocation]
) -> list[Allocation]:
    """``shared_rank``: every LoRA client's rank raised to the largest the round allocated, at
    its own blocks and targets, or as near as still fits (memory, deadline, no fewer local
    steps than it had). Why: in one envelope a rank component only some clients train is
    averaged with the others' "no change" (``lift``'s ``keep_tail``) or zeros, and the
    utility's rank choice is a near tie (its R and E barely move with rank)."""
    ranks = [
        a.chosen.spec.r for a in allocations if a.chosen and isinstance(a.chosen.spec, LoraSpec)
    ]
    if not ranks:
        return list(allocations)
    top, adapt = max(ranks), problem.config.adapt_steps
    offered = sorted({c.spec.r for c in problem.catalogue if isinstance(c.spec, LoraSpec)})
    out = []
    for a, client in zip(allocations, clients, strict=True):
        spec = a.chosen.spec if a.chosen is not None else None
        if a.chosen is None or not isinstance(spec, LoraSpec) or spec.r >= top:
            out.append(a)
            continue
        had = a.steps if a.steps is not None else client.workload.steps
        for rank in (r for r in reversed(offered) if spec.r < r <= top):
            sibling = lora_sibling(problem, a.chosen, rank)
            ev = evaluate(problem, sibling, client, adapt) if sibling is not None else None
            if sibling is None or ev is None or not ev.feasible or ev.steps < had:
                continue
            why = f"; rank raised from {spec.r} to {rank}, the round's shared rank (shared_rank)"
            a = replace(a, chosen=sibling, terms=ev.terms, reason=a.reason + why)
            break
        out.append(a)
    return out


def allocate(problem: AllocationProblem, clients: Sequence[ClientInfo]) -> list[Allocation]:
    """One ``Allocation`` per client, in order, by ``problem.config.policy``; the round's
    floor ``T_floor`` is computed over all of them first (``round_aware``). With
    ``depth_gate_tv`` a round whose deep trainers' labels are too unlike the round's is
    allocated again with LoRA capped above that depth (``depth_gate``), and with
    ``client_gate_tv`` each client whose own labels are too unlike the round's is capped at the
    shallowest depth (``with_client_gate``); with ``shared_rank``
    each LoRA client's rank is then raised towards the round's largest (``with_shared_rank``)."""
    policy = get_policy(problem.config.policy)
    problem = replace(problem, round_clients=tuple(clients))
    if problem.config.shared_depth:
        problem = with_shared_depth(problem, clients)
    if problem.config.round_aware:
        problem = with_floor(problem, clients)
    out = [policy(problem, client) for client in clients]
    capped = depth_gate(problem, clients, out)
    if capped is None:
        out = with_client_gate(problem, clients, out, policy)
        return _ranks_shared(problem, clients, out)
    cap, depth, tv = capped
    problem = replace(problem, max_blocks=cap)
    if problem.config.round_aware:
        problem = with_floor(problem, clients)
    why = (
        f"; LoRA capped at the top {cap} block(s): the clients on {depth} or more hold labels "
        f"at total variation {tv:.2f} from the round's (allocation.depth_gate_tv = "
        f"{problem.config.depth_gate_tv:g})"
    )
    out = [replace(a, reason=a.reason + why) for a in (policy(problem, c) for c in clients)]
    out = with_client_gate(problem, clients, out, policy)
    return _ranks_shared(problem, clients, out)


def _ranks_shared(
    problem: AllocationProblem, clients: Sequence[ClientInfo], out: list[Allocation]
) -> list[Allocation]:
    cfg = problem.config
    if not cfg.shared_rank or cfg.policy != "utility":
        return out
    return with_shared_rank(problem, clients, out)


register_policy("uniform", uniform)
register_policy("tiered", tiered)
register_policy("utility", utility)
